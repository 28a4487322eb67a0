"""Report tables: a small table model, the study-style pivot of a sweep's results, HTML and Markdown.

A sweep's table is a pivot of its points (cells of the search space): ``rows`` axes make the row
labels, an optional ``columns`` axis spreads each row over its values (as the study's table 1 puts
the share of training data across), and ``values`` are the metrics shown for each point: the mean
over the point's completed seeds, with ``+/- sd`` when there are several. The best point by the
sweep's objective is marked.
"""

from __future__ import annotations

import html
import itertools
import math
import statistics
from dataclasses import dataclass, field

from rvseg.sweeps.spec import OBJECTIVES, SweepSpec, format_value

#: How each metric is labelled and formatted in a table.
METRIC_LABELS = {
    "final_train_loss": "train loss", "final_val_loss": "val loss", "best_val_loss": "best val loss",
    "best_val_dice": "val Dice", "final_val_dice": "final val Dice", "test_dice": "test Dice",
    "best_epoch": "best epoch", "epochs_done": "epochs", "seconds": "seconds",
}
BEST_MARK = "\u2605"  # a star


@dataclass
class Cell:
    """One table cell; ``best`` marks the best point, ``muted`` a missing or failed value."""

    text: str
    best: bool = False
    muted: bool = False


@dataclass
class Table:
    """A table with ``stub`` leading label columns and optional column groups above the header.

    Attributes:
        title: caption.
        columns: header texts, one per column.
        rows: body rows of :class:`Cell`, each as long as ``columns``.
        groups: ``(label, span)`` pairs covering ``columns`` left to right (an empty label over the
            stub), or empty for a one-row header.
        stub: how many leading columns are row labels.
        note: a line under the table.
    """

    title: str
    columns: list[str]
    rows: list[list[Cell]]
    groups: list[tuple[str, int]] = field(default_factory=list)
    stub: int = 0
    note: str = ""


def format_metric(name: str, values: list[float]) -> str:
    """``0.812`` or ``0.812 +/- 0.010`` (sample sd) for the values of one metric at one point."""
    digits = 3 if "dice" in name else 4 if "loss" in name else 1 if name == "seconds" else 0
    mean = statistics.fmean(values)
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" \u00b1 {statistics.stdev(values):.{digits}f}"
    return text


def display_value(axis: str, value) -> str:
    """An axis value as the study shows it: the training share as a percentage, floats to 4 digits."""
    if axis == "fraction" and isinstance(value, (int, float)):
        return f"{value:.0%}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return format_value(value)


def point_label(params: dict) -> str:
    """A short label of a point for figures: ``optimizer=adam lr=0.001 fraction=40%``."""
    return " ".join(f"{key}={display_value(key, value)}" for key, value in params.items())


@dataclass
class Point:
    """The runs of one point of the space."""

    params: dict
    runs: list[dict]

    def values(self, metric: str) -> list[float]:
        return [float(r[metric]) for r in self.runs
                if r["status"] == "complete" and not math.isnan(float(r.get(metric, math.nan)))]

    def state(self) -> str:
        """``complete`` if any seed completed, else the most telling status of its runs."""
        statuses = {r["status"] for r in self.runs}
        for status in ("complete", "failed", "pruned", "interrupted", "pending"):
            if status in statuses:
                return status
        return "pending"


def group_points(records: list[dict], spec: SweepSpec) -> dict[tuple, Point]:
    points: dict[tuple, Point] = {}
    for record in records:
        key = tuple(record.get(name) for name in spec.axis_names)
        points.setdefault(key, Point({name: record.get(name) for name in spec.axis_names}, [])).runs.append(record)
    return points


def best_point(points: dict[tuple, Point], objective: str, n_seeds: int = 1) -> tuple | None:
    """Key of the point with the best mean objective among the points with all ``n_seeds`` seeds
    completed (a mean of fewer seeds is not comparable); among those with any, while none has all."""
    sign = 1 if OBJECTIVES[objective][0] == "maximize" else -1
    scored = {key: p.values(objective) for key, p in points.items() if p.values(objective)}
    complete = {key: values for key, values in scored.items() if len(values) >= n_seeds} or scored
    return max(complete, key=lambda key: sign * statistics.fmean(complete[key])) if complete else None


def sweep_table(records: list[dict], spec: SweepSpec, layout: dict | None = None) -> Table:
    """The pivot table of a sweep (module docstring).

    Args:
        records: run records (:func:`rvseg.sweeps.results.read_run`).
        spec: the sweep's SPEC.
        layout: ``{"title", "rows": [axes], "columns": axis or None, "values": [metrics]}``; default
            the SPEC's ``table``, else one row per point with the objective and the losses.
    """
    layout = dict(layout or spec.table or {})
    points = group_points(records, spec)
    column_axis = layout.get("columns")
    row_axes = [a for a in layout.get("rows", spec.axis_names) if a != column_axis]
    row_axes += [a for a in spec.axis_names if a not in row_axes and a != column_axis]  # every axis shown
    wanted = layout.get("values", [spec.objective, "best_val_dice", "final_train_loss", "final_val_loss"])
    metrics = [m for m in dict.fromkeys(wanted) if any(p.values(m) for p in points.values())]
    if not metrics:
        metrics = [spec.objective]
    best = best_point(points, spec.objective, len(spec.seeds))
    axes = {axis.name: axis for axis in spec.space}
    column_values = axes[column_axis].values if column_axis else [None]
    row_keys = ordered_row_keys(spec, row_axes, points)

    rows = []
    for row_key in row_keys:
        row = [Cell(display_value(a, v)) for a, v in zip(row_axes, row_key, strict=True)]
        for column_value in column_values:
            params = dict(zip(row_axes, row_key, strict=True))
            if column_axis:
                params[column_axis] = column_value
            key = tuple(params.get(name) for name in spec.axis_names)
            row += point_cells(points.get(key), metrics, is_best=key == best, objective=spec.objective,
                               n_seeds=len(spec.seeds))
        rows.append(row)
    metric_labels = [METRIC_LABELS.get(m, m) for m in metrics]
    columns = list(row_axes) + metric_labels * len(column_values)
    groups = []
    if column_axis:
        groups = [("", len(row_axes))] + [(f"{column_axis} {display_value(column_axis, v)}", len(metrics))
                                          for v in column_values]
    direction = "higher" if spec.direction == "maximize" else "lower"
    seeds = f"mean \u00b1 sd over {len(spec.seeds)} seeds" if len(spec.seeds) > 1 else "one seed per point"
    note = (f"{BEST_MARK} best point by {METRIC_LABELS.get(spec.objective, spec.objective)} ({direction} is better); "
            f"{seeds}; '\u2013' = not run yet.")
    return Table(layout.get("title", f"{spec.name}: results"), columns, rows, groups, stub=len(row_axes), note=note)


def ordered_row_keys(spec: SweepSpec, row_axes: list[str], points: dict[tuple, Point]) -> list[tuple]:
    """Row label tuples: every grid combination in SPEC order; for TPE the points run, best first."""
    if spec.sampler == "grid":
        axes = {axis.name: axis for axis in spec.space}
        return list(itertools.product(*(axes[a].values for a in row_axes)))
    sign = -1 if spec.direction == "maximize" else 1
    ranked = sorted(points.values(), key=lambda p: sign * statistics.fmean(p.values(spec.objective))
                    if p.values(spec.objective) else math.inf)
    return list(dict.fromkeys(tuple(p.params[a] for a in row_axes) for p in ranked))


def point_cells(point: Point | None, metrics: list[str], is_best: bool, objective: str,
                n_seeds: int = 1) -> list[Cell]:
    """A point's cells; a mean over fewer than ``n_seeds`` completed seeds says so."""
    if point is None:
        return [Cell("\u2013", muted=True) for _ in metrics]
    cells = []
    for metric in metrics:
        values = point.values(metric)
        if values:
            partial = f" ({len(values)} of {n_seeds} seeds)" if len(values) < n_seeds else ""
            cells.append(Cell(format_metric(metric, values) + partial, best=is_best and metric == objective))
        else:
            cells.append(Cell(point.state() if point.state() != "complete" else "\u2013", muted=True))
    if is_best and objective not in metrics:
        for cell in cells:
            cell.best = not cell.muted
    return cells


def runs_table(records: list[dict], spec: SweepSpec) -> Table:
    """Every run: point, seed, status and its metrics (the content of ``results.csv``)."""
    metrics = ["epochs_done", "best_epoch", "best_val_dice", "final_train_loss", "final_val_loss", "test_dice",
               "seconds"]
    metrics = [m for m in metrics if any(not math.isnan(float(r.get(m, math.nan))) for r in records)]
    columns = [*spec.axis_names, "seed", "status", *(METRIC_LABELS.get(m, m) for m in metrics)]
    rows = []
    for record in records:
        row = [Cell(display_value(a, record.get(a))) for a in spec.axis_names]
        row += [Cell(str(record["seed"])), Cell(record["status"], muted=record["status"] != "complete")]
        for metric in metrics:
            value = float(record.get(metric, math.nan))
            row.append(Cell("\u2013" if math.isnan(value) else format_metric(metric, [value]), muted=math.isnan(value)))
        rows.append(row)
    return Table("All runs", columns, rows, stub=len(spec.axis_names))


# ---------------------------------------------------------------- rendering


def table_html(table: Table) -> str:
    """The table as an HTML ``<table>`` (best cells in ``class="best"``)."""
    out = [f'<table><caption>{html.escape(table.title)}</caption><thead>']
    if table.groups:
        out.append("<tr>" + "".join(f'<th colspan="{span}" class="group">{html.escape(label)}</th>'
                                    for label, span in table.groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + "</tr></thead><tbody>")
    for row in table.rows:
        cells = []
        for i, cell in enumerate(row):
            tag = "th" if i < table.stub else "td"
            classes = " ".join(c for c, on in (("best", cell.best), ("muted", cell.muted)) if on)
            text = html.escape(cell.text) + (f" {BEST_MARK}" if cell.best else "")
            attributes = f' class="{classes}"' if classes else ""
            cells.append(f"<{tag}{attributes}>{text}</{tag}>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    if table.note:
        out.append(f'<p class="note">{html.escape(table.note)}</p>')
    return "".join(out)


def table_markdown(table: Table) -> str:
    """The table in GitHub Markdown (column groups folded into the header; best cells in bold)."""
    header = list(table.columns)
    if table.groups:
        position = 0
        for label, span in table.groups:
            for i in range(position, position + span):
                header[i] = f"{label} {header[i]}".strip()
            position += span
    lines = [f"**{table.title}**", "", "| " + " | ".join(escape_md(h) for h in header) + " |",
             "|" + "|".join("---" if i < table.stub else "---:" for i in range(len(header))) + "|"]
    for row in table.rows:
        texts = [f"**{escape_md(c.text)}** {BEST_MARK}" if c.best else escape_md(c.text) for c in row]
        lines.append("| " + " | ".join(texts) + " |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines)


def escape_md(text: str) -> str:
    return text.replace("|", "\\|")
