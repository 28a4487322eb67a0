"""``rvseg report``: one self-contained HTML page of a sweep or of a run, and its tables in Markdown.

The page has no external resource and no script: CSS is inline, figures are PNG ``data:`` URIs, and
the long tables fold into ``<details>``, so it opens offline in any browser and can be mailed as one
file. ``report.md`` beside it (same name, ``.md``) holds the headings, facts and tables.

- **Sweep** (a folder with ``sweep.json``): what ran and at which scale (overrides of a preset are
  listed against the preset's values), the preset's table laid out like the study's (see
  :mod:`rvseg.report.tables`), loss curves per point, the overlay a preset asks for (the losses
  preset: validation loss of every loss), parameter importances and a parallel-coordinates plot for
  TPE sweeps, failures, and every run.
- **Run** (a folder with ``metrics.csv``): its facts and settings, curves, the per-epoch metrics, and
  best/worst examples from an evaluation: ``--dataset`` evaluates the run's best checkpoint on that
  prepared set (validation patients) with :func:`rvseg.evaluate.evaluate`; otherwise evaluations
  already inside the run folder (e.g. a sweep's ``test/``) are shown.
"""

from __future__ import annotations

import base64
import datetime
import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rvseg import __version__
from rvseg.errors import DataError
from rvseg.io import check_output_file, read_json, write_text
from rvseg.report import plots
from rvseg.report.tables import (
    BEST_MARK,
    Cell,
    Table,
    format_metric,
    point_label,
    runs_table,
    sweep_table,
    table_html,
    table_markdown,
)
from rvseg.sweeps.results import collect_results, run_status, sweep_record
from rvseg.sweeps.spec import SweepSpec, parse_spec
from rvseg.train.progress import read_metrics

#: Files of an ``rvseg evaluate`` folder shown in a run report, with their captions.
EVALUATION_FIGURES = (("examples_best.png", "best examples"), ("examples_worst.png", "worst examples"),
                      ("dice_histogram.png", "Dice histogram"))

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1250px;
       color: #1d2330; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #d5d9e0; padding-bottom: 0.2em; }
.subtitle { color: #5a6275; margin-top: 0; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1.2em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.4em; }
th, td { border: 1px solid #d5d9e0; padding: 0.25em 0.6em; }
thead th { background: #eef1f6; } th.group { text-align: center; }
tbody th { text-align: left; font-weight: normal; background: #f8f9fb; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; background: #fff3c4; } td.muted, th.muted { color: #8a90a0; }
p.note { color: #5a6275; font-size: 0.85em; margin-top: 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #e3e6ec; }
figcaption { color: #5a6275; font-size: 0.85em; }
details summary { cursor: pointer; color: #2a5db0; margin: 0.6em 0; }
.warning { background: #fdecea; border-left: 4px solid #d93025; padding: 0.4em 0.8em; }
"""


@dataclass
class Figure:
    caption: str
    png: bytes


@dataclass
class Details:
    """Blocks folded under a summary line (``<details>``)."""

    summary: str
    blocks: list


@dataclass
class Section:
    heading: str
    blocks: list = field(default_factory=list)  # str (paragraph) | Table | Figure | Details


@dataclass
class Report:
    title: str
    subtitle: str
    facts: list[tuple[str, str]]
    sections: list[Section]


def write_report(path: str | Path, out: str | Path, dataset: str | Path | None = None) -> list[Path]:
    """Write the HTML report of a sweep or run folder to ``out`` and its Markdown beside it.

    Returns:
        ``[html path, markdown path]``.

    Raises:
        DataError: ``path`` is neither a sweep folder (``sweep.json``) nor a run folder (``metrics.csv``).
    """
    path, out = Path(path), Path(out)
    markdown = out.with_suffix(".md")
    if out.suffix.lower() == ".md":  # .MD too: one file on a case-insensitive disk
        raise DataError("the HTML report would be overwritten by its Markdown twin (same name, .md); "
                        "name it .html", out)
    # `--out reports` (a folder meant) or `report.txt` would be a page no browser opens by its name.
    if out.suffix.lower() not in (".html", ".htm"):
        raise DataError("the report is one HTML file: give it a name ending in .html (e.g. report.html)", out)
    check_output_file(out)
    check_output_file(markdown)
    if (path / "sweep.json").is_file():
        report = sweep_report(path)
    elif (path / "metrics.csv").is_file() or (path / "config.yaml").is_file():
        report = run_report(path, Path(dataset) if dataset else None)
    else:
        raise DataError("neither a sweep folder (sweep.json) nor a run folder (metrics.csv)", path)
    write_text(out, render_html(report))
    write_text(markdown, render_markdown(report))
    return [out, markdown]


# ---------------------------------------------------------------- sweeps


def sweep_report(folder: Path) -> Report:
    spec = parse_spec(sweep_record(folder)["spec"])
    records = collect_results(folder / "runs", spec.run_order())
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    expected = len(spec.grid_cells()) * len(spec.seeds) if spec.sampler == "grid" else spec.n_trials * len(spec.seeds)
    facts = [("preset", spec.preset or "\u2013 (SPEC file)"), ("data set", spec.dataset),
             ("sampler", spec.sampler + (f", {spec.n_trials} trials" if spec.n_trials else "")),
             ("objective", f"{spec.objective} ({spec.direction})"), ("seeds", ", ".join(map(str, spec.seeds))),
             ("runs", f"{len(records)} of {expected}: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                                                            or "none yet")),
             ("trained on", trained_on(records)), ("test set", spec.test or "none")]
    sections = [Section("Scale", scale_blocks(spec)), Section("Results", [sweep_table(records, spec)])]
    sections += curve_sections(records, spec)
    if spec.sampler == "tpe":
        sections.append(Section("Search", search_blocks(folder)))
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        sections.append(Section("Failures", [Table("Failed runs", ["run", "error"],
                                                   [[Cell(r["run"]), Cell(r["error"])] for r in failed], stub=1)]))
    sections.append(Section("All runs", [Details(f"{len(records)} runs (as in results.csv)",
                                                 [runs_table(records, spec)])]))
    return Report(f"Sweep {spec.name}", f"rvseg {__version__}, {timestamp()}", facts, sections)


def trained_on(records: list[dict]) -> str:
    """The devices the finished runs trained on, from their ``summary.json``: the SPEC's device is the
    last invocation's, and a sweep may have been continued on another machine."""
    counts: dict[str, int] = {}
    for record in records:
        device = (read_json(Path(record["folder"]) / "summary.json") or {}).get("device")
        if device:
            counts[device] = counts.get(device, 0) + 1
    return ", ".join(f"{device} ({n} run{'s' if n > 1 else ''})" for device, n in sorted(counts.items())) \
        or "no run finished yet"


#: Overrides that change how much a sweep computes; any other override (the device, the validation
#: patients, --cuda-graph ...) leaves it at the preset's scale.
SCALE_FIELDS = ("epochs", "size", "width", "depth", "batch_size", "repeats")


def scale_blocks(spec: SweepSpec) -> list:
    """What the sweep changed from its preset: the scale it ran at, and cut-down axes."""
    as_written = "the SPEC as written" + (f" (preset {spec.preset})" if spec.preset else "")
    if not spec.scale and not spec.restricted:
        return [f"Full scale: {as_written}."]
    rows = [[Cell(name), Cell(show(change["preset"], " x ")), Cell(show(change["used"], " x "))]
            for name, change in spec.scale.items()]
    rows += [[Cell(f"{axis} (axis)"), Cell("all values"), Cell(", ".join(values))]
             for axis, values in spec.restricted.items()]
    rescaled = spec.restricted or any(name in SCALE_FIELDS and change["preset"] != change["used"]
                                      for name, change in spec.scale.items())
    verdict = ("This sweep ran at another scale than its SPEC (below); compare its numbers only with runs at "
               "the same scale." if rescaled else
               f"Full scale: {as_written}, with these settings changed (none of them changes the scale).")
    return [verdict, Table("Overrides", ["setting", "preset", "used"], rows, stub=1)]


def show(value, separator: str = ", ") -> str:
    """A setting as text; lists joined (``128 x 112`` for a size), an empty list as a dash."""
    if isinstance(value, list):
        return separator.join(map(str, value)) if value else "\u2013"
    return str(value)


def curve_sections(records: list[dict], spec: SweepSpec) -> list[Section]:
    """Loss curves per point and, when the layout asks for one, an overlay across points."""
    by_point: dict[str, list[list[dict]]] = {}
    for record in records:
        rows = read_metrics(Path(record["folder"])) if Path(record["folder"]).is_dir() else []
        if rows:
            label = point_label({name: record.get(name) for name in spec.axis_names})
            by_point.setdefault(label, []).append(rows)
    if not by_point:
        return [Section("Curves", ["No run has finished an epoch yet."])]
    points = list(by_point.items())
    blocks = [Figure("Training (solid) and validation (dashed) loss per point; mean over seeds, sd shaded"
                     + (f"; the first {plots.MAX_CURVES} points" if len(points) > plots.MAX_CURVES else ""),
                     plots.curves_figure(points))]
    overlay = (spec.table or {}).get("overlay")
    if overlay:
        blocks.insert(0, Figure(f"{overlay.replace('_', ' ')} of every point", plots.overlay_figure(points, overlay)))
    return [Section("Curves", blocks)]


def search_blocks(folder: Path) -> list:
    """Parameter importances and the parallel-coordinates plot of a TPE sweep."""
    export = read_json(folder / "trials.json")
    if export is None:
        return ["No trials.json yet (written when a sweep command ends)."]
    study = plots.study_from_trials(export)
    complete = len(study.trials)
    if complete < 2:
        return [f"{complete} completed trial(s): importances need at least two."]
    blocks = []
    try:
        blocks.append(Figure("Parameter importances (Optuna, PED-ANOVA)", plots.importance_figure(study)))
    except (RuntimeError, ValueError) as exc:  # e.g. every trial has the same value
        blocks.append(f"Parameter importances unavailable: {exc}")
    blocks.append(Figure("Parallel coordinates of the completed trials (colour: objective)",
                         plots.parallel_figure(study)))
    return blocks


# ---------------------------------------------------------------- runs


def read_run_config(path: Path) -> dict:
    """A run's ``config.yaml`` as a mapping ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8 text
        raise DataError(f"cannot read this run's config ({exc})", path) from None
    if not isinstance(config, dict):
        raise DataError("this run's config holds no mapping of option: value (damaged?)", path)
    return config


def run_report(folder: Path, dataset: Path | None) -> Report:
    summary = read_json(folder / "summary.json") or {}
    config = read_run_config(folder / "config.yaml")
    rows = read_metrics(folder)
    facts = [("status", run_status(folder)), ("epochs", f"{len(rows)} of {config.get('epochs', '?')}")]
    if summary:
        dice = ", ".join(f"{label} {value:.4f}" for label, value in summary["best_val_dice"].items())
        facts += [("best val Dice", f"{dice} (epoch {summary['best_epoch']})"),
                  ("training", f"{summary['n_train']} slices of {', '.join(summary['train_patients'])}"),
                  ("validation", f"{summary['n_val']} slices of {', '.join(summary['val_patients'])}"),
                  ("device", f"{summary['device']}, {summary['precision']}, {summary['world_size']} process(es)")]
    if rows:
        facts.append(("training time", f"{sum(r['seconds'] for r in rows):.1f} s"))
    sections = [Section("Settings", [settings_table(config)])]
    if rows:
        sections.append(Section("Curves", [Figure("Loss, validation Dice and learning rate per epoch",
                                                  progress_png(rows))]))
        best_epoch = summary.get("best_epoch")
        sections.append(Section("Metrics", [Details(f"{len(rows)} epochs (as in metrics.csv)",
                                                    [epochs_table(rows, best_epoch)])]))
    sections.append(Section("Examples", example_blocks(folder, dataset)))
    return Report(f"Run {folder.name}", f"rvseg {__version__}, {timestamp()}", facts, sections)


def settings_table(config: dict) -> Table:
    shown = ("target", "arch", "width", "depth", "loss", "optimizer", "lr", "scheduler", "epochs", "batch_size",
             "fraction", "augment", "seed", "val_patients", "data_hash")
    rows = [[Cell(key), Cell(show(config[key]))] for key in shown if key in config]
    return Table("Training settings (config.yaml)", ["option", "value"], rows, stub=1)


def epochs_table(rows: list[dict], best_epoch: int | None) -> Table:
    columns = list(rows[0])
    body = []
    for row in rows:
        best = row["epoch"] == best_epoch
        cells = [Cell(str(row["epoch"]))]
        for key in columns[1:]:
            text = f"{row[key]:.6g}" if key == "lr" else format_metric(key, [row[key]])
            cells.append(Cell(text, best=best and key.startswith("val_dice")))
        body.append(cells)
    return Table("Per-epoch metrics", columns, body, stub=1, note=f"{BEST_MARK} the best epoch (saved as best.pt)")


def progress_png(rows: list[dict]) -> bytes:
    """The run's ``progress.png`` figure, redrawn from its metrics."""
    from rvseg.train.progress import draw_progress

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "progress.png"
        draw_progress(rows, path)
        return path.read_bytes()


def example_blocks(folder: Path, dataset: Path | None) -> list:
    """Best/worst examples and the Dice histogram of an evaluation of the run."""
    if dataset is not None:
        from rvseg.evaluate import evaluate

        with tempfile.TemporaryDirectory() as tmp:
            summary = evaluate(folder, dataset, split="val", out=Path(tmp) / "eval")
            return evaluation_blocks(Path(tmp) / "eval", f"validation patients of {dataset}", summary)
    found = sorted(p.parent for p in folder.glob("*/summary.json") if (p.parent / "examples_best.png").is_file())
    if not found:
        return ["No evaluation in this run folder: pass --dataset PREPARED to evaluate the best checkpoint "
                "and show its best and worst examples."]
    blocks = []
    for evaluation in found:
        blocks += evaluation_blocks(evaluation, f"{evaluation.name}/", read_json(evaluation / "summary.json"))
    return blocks


def evaluation_blocks(folder: Path, source: str, summary: dict) -> list:
    rows = []
    for label, stats in summary["labels"].items():
        metrics = stats["overall"]["metrics"]
        rows.append([Cell(label)] + [Cell(f"{metrics[m]['mean']:.3f} \u00b1 {metrics[m]['sd']:.3f}")
                                     for m in ("dice", "jaccard", "hd")])
    rule = summary.get("settings", {}).get("postprocess")
    # The training curves score the raw thresholded output; an evaluation may post-process it.
    note = (f"masks post-processed with the '{rule}' rule (the training's val Dice scores the raw output)"
            if rule and rule != "none" else "raw thresholded masks, as the training's val Dice")
    blocks = [Table(f"Evaluation on {source}", ["label", "Dice", "Jaccard", f"HD ({summary.get('units', 'mm')})"],
                    rows, stub=1, note=note)]
    for name, caption in EVALUATION_FIGURES:
        if (folder / name).is_file():
            blocks.append(Figure(f"{caption} ({source})", (folder / name).read_bytes()))
    return blocks


# ---------------------------------------------------------------- rendering


def timestamp() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def render_html(report: Report) -> str:
    """The report as one HTML document (no external resource, no script)."""
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in report.facts)
    body = [f"<h1>{html.escape(report.title)}</h1>", f'<p class="subtitle">{html.escape(report.subtitle)}</p>',
            f'<dl class="facts">{facts}</dl>']
    for section in report.sections:
        body.append(f"<h2>{html.escape(section.heading)}</h2>")
        body += [block_html(block) for block in section.blocks]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def block_html(block) -> str:
    if isinstance(block, str):
        return f"<p>{html.escape(block)}</p>"
    if isinstance(block, Table):
        return table_html(block)
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    if isinstance(block, Details):
        return (f"<details><summary>{html.escape(block.summary)}</summary>"
                + "".join(block_html(b) for b in block.blocks) + "</details>")
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(report: Report) -> str:
    """Headings, facts and tables of the report in Markdown; a figure is named by its caption (its image is
    in the HTML only)."""
    lines = [f"# {report.title}", "", report.subtitle, ""]
    lines += [f"- **{key}**: {value}" for key, value in report.facts] + [""]
    for section in report.sections:
        lines += [f"## {section.heading}", ""]
        for block in flatten(section.blocks):
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, Table):
                lines += [table_markdown(block), ""]
            elif isinstance(block, Figure):
                lines += [f"*Figure (in the HTML version): {block.caption}*", ""]
    return "\n".join(lines)


def flatten(blocks: list) -> list:
    out = []
    for block in blocks:
        out += flatten(block.blocks) if isinstance(block, Details) else [block]
    return out
