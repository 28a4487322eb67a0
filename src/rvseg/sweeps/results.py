"""What a sweep's run folders hold, read back: one record per run, and ``SWEEP/results.csv``.

A run folder ``SWEEP/runs/<name>/`` is an ordinary ``rvseg train`` folder plus what the sweep adds:

- ``trial.json``: the point of the search space, the seed, the cell label and the data set used;
- ``sweep-config.yaml``: the training options the trainer was started with;
- ``sweep-log.jsonl``: one line per time a worker started (or resumed) its trainer;
- ``train.log``: the trainer's output;
- ``pruned.json`` / ``failed.json``: written when the trial was pruned or training failed;
- ``test/``: ``rvseg evaluate`` on the SPEC's test set, when it has one.

Every number here is read from the folder (``summary.json``, ``metrics.csv``), never from the
Optuna storage, so ``results.csv`` has exactly one row per run folder, i.e. per cell and seed.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from rvseg.errors import DataError
from rvseg.io import read_json, write_csv
from rvseg.train.progress import read_metrics

#: Statuses of a run that will not train any further.
FINISHED = ("complete", "pruned", "failed")
#: Columns of ``results.csv`` before the parameters; metric columns follow them.
LEAD_COLUMNS = ("run", "cell", "seed", "status")
METRIC_COLUMNS = ("epochs_done", "best_epoch", "best_val_dice", "final_val_dice", "final_train_loss",
                  "final_val_loss", "best_val_loss", "test_dice", "seconds")


def run_status(folder: Path) -> str:
    """``complete`` | ``pruned`` | ``failed`` | ``interrupted`` (has ``last.pt``) | ``pending``."""
    if (folder / "summary.json").is_file():
        return "complete"
    if (folder / "pruned.json").is_file():
        return "pruned"
    if (folder / "failed.json").is_file():
        return "failed"
    if (folder / "last.pt").is_file():
        return "interrupted"
    return "pending"


def sweep_record(folder: Path) -> dict | None:
    """``folder/sweep.json``, what a sweep records when it starts (its SPEC as ``spec``, ``identity``,
    ``study``), or None before the first start.

    Raises:
        DataError: the file is damaged or records no SPEC.
    """
    path = folder / "sweep.json"
    record = read_json(path)
    if record is not None and not isinstance(record.get("spec"), dict):
        raise DataError("this sweep record holds no SPEC (damaged?)", path)
    return record


def epoch_dice(row: dict) -> float:
    """Mean validation Dice over the labels of one ``metrics.csv`` row."""
    values = [value for key, value in row.items() if key.startswith("val_dice_")]
    return sum(values) / len(values) if values else math.nan


def read_run(folder: Path) -> dict:
    """The record of one run folder: its point, status and final/best metrics.

    Returns:
        a flat dict: ``run, cell, seed, status``, the parameters, ``epochs_done, best_epoch,
        best_val_dice`` (mean over labels at the best epoch, as the trainer chose it),
        ``final_val_dice``, ``final_train_loss``, ``final_val_loss``, ``best_val_loss``,
        ``test_dice`` (mean over labels; NaN without a test set), ``seconds`` (training time summed
        over every session of the run), per-label ``best_val_dice_<label>``, ``final_val_dice_<label>``
        and ``test_dice_<label>``, ``error`` and ``folder``. Metrics are NaN when not yet known.
    """
    trial = read_json(folder / "trial.json") or {}
    rows = read_metrics(folder)
    record = {"run": folder.name, "cell": trial.get("cell", ""), "seed": trial.get("seed"),
              "status": run_status(folder), **trial.get("params", {})}
    last = rows[-1] if rows else {}
    best_row = max(rows, key=epoch_dice) if rows else {}
    summary = read_json(folder / "summary.json")
    if summary is not None:
        best_row = next((r for r in rows if r["epoch"] == summary["best_epoch"]), best_row)
    record.update({
        "epochs_done": len(rows),
        "best_epoch": best_row.get("epoch", math.nan),
        "best_val_dice": epoch_dice(best_row) if best_row else math.nan,
        "final_val_dice": epoch_dice(last) if last else math.nan,
        "final_train_loss": last.get("train_loss", math.nan),
        "final_val_loss": last.get("val_loss", math.nan),
        "best_val_loss": min((r["val_loss"] for r in rows), default=math.nan),
        "seconds": round(sum(r["seconds"] for r in rows), 3),
    })
    for key in (k for k in best_row if k.startswith("val_dice_")):
        label = key.removeprefix("val_dice_")
        record[f"best_val_dice_{label}"] = best_row[key]
        record[f"final_val_dice_{label}"] = last.get(key, math.nan)
    record.update(test_scores(folder))
    failed = read_json(folder / "failed.json")
    record["error"] = failed["error"] if failed else ""
    record["folder"] = str(folder)
    return record


def test_scores(folder: Path) -> dict:
    """``test_dice`` and ``test_dice_<label>`` from ``RUN/test/summary.json`` (NaN without it)."""
    summary = read_json(folder / "test" / "summary.json")
    if not summary:
        return {"test_dice": math.nan}
    dice = {label: stats["overall"]["metrics"]["dice"]["mean"] for label, stats in summary["labels"].items()}
    scores = {f"test_dice_{label}": value for label, value in dice.items()}
    scores["test_dice"] = sum(dice.values()) / len(dice) if dice else math.nan
    return scores


def collect_results(runs_dir: Path, order: list[str] | None = None) -> list[dict]:
    """One record per run folder under ``runs_dir`` that a sweep started (has ``trial.json``).

    Args:
        runs_dir: ``SWEEP/runs``.
        order: run names in the order wanted first (e.g. grid order); others follow by start time.
    """
    folders = sorted((p for p in runs_dir.glob("*/trial.json")), key=lambda p: p.stat().st_mtime)
    records = {path.parent.name: read_run(path.parent) for path in folders}
    ranked = [name for name in (order or []) if name in records]
    ranked += [name for name in records if name not in set(ranked)]
    return [records[name] for name in ranked]


def results_columns(records: list[dict], params: list[str]) -> list[str]:
    columns = list(LEAD_COLUMNS) + list(params) + list(METRIC_COLUMNS)
    for record in records:
        columns += [key for key in record if key not in columns and key not in ("error", "folder")]
    return columns + ["error", "folder"]


def write_results(path: Path, records: list[dict], params: list[str]) -> None:
    """``results.csv``: the records, one row each, every parameter and metric as a column."""
    write_csv(path, records, results_columns(records, params))


def read_results(path: Path) -> list[dict]:
    """``results.csv`` back as dicts (empty texts stay empty strings)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
