"""Collect what ``benchmarks/gpu_check.sh`` measured into one ``results.json``, with the issues' targets.

Standard library only (it runs after every step, also where a step broke the Python environment)::

    python benchmarks/gpu_summary.py --work WORK [--keep KEEP] --out OUTDIR/results.json [--print]

Reads from the work folder: ``steps.jsonl`` (one line per step: name, status, rc, seconds, note),
``json/*.json`` (``env.json``, one ``rvseg bench --out`` result per ``bench-*`` step, the peer's
``peer-*.json``) and ``runs/<step>/`` (``summary.json`` and ``metrics.csv`` of each training run);
from the keep folder: ``accuracy/<config>/`` (training runs too) and ``sweeps/<preset>/results.csv``.
Writes ``{"mode", "started_utc", "elapsed_s", "budget_s", "environment", "steps", "bench", "peer",
"training", "sweeps", "targets"}``; every target is ``{"value", "goal", "met"}`` (or the raw figures
where the issue asks only for a report), and None where its steps did not finish.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

#: Issue 6: the training loop reaches this share of the raw step's throughput on a GPU...
LOOP_OVER_RAW_GOAL = 0.9
#: ... and this multiple of the conventional DataLoader pipeline.
LOOP_OVER_PEER_GOAL = 5.0
#: Issue 6: the study's baseline (100 epochs, batch 16) on the RVSC training set, seconds.
BASELINE_SECONDS_GOAL = 20.0
#: Issue 6: report the time to reach this validation endo Dice.
DICE_GOAL = 0.80
LABEL = "endo"
#: Names of the gpu_check.sh steps that the targets read.
LOOP_BENCH, PEER = "bench-256-bf16-cl", "peer-256-bf16-cl"
BASELINE_RUNS = ("train-default", "train-default-graph")
#: The launch-bound small-image step (RVSC's native size): eager, then replayed as one CUDA graph.
SMALL_STEP = ("bench-rvsc", "bench-rvsc-graph")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(work: Path) -> list[dict]:
    path = work / "steps.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def time_to_dice(rows: list[dict[str, str]], goal: float = DICE_GOAL, label: str = LABEL) -> dict | None:
    """First epoch whose validation Dice of ``label`` reaches ``goal``, and the epoch seconds summed until then.

    Args:
        rows: ``metrics.csv`` rows (``epoch``, ``seconds``, ``val_dice_<label>`` ...), in order.

    Returns:
        ``{"epoch", "seconds"}``, or None if no epoch reaches the goal.
    """
    elapsed = 0.0
    for row in rows:
        elapsed += float(row["seconds"])
        if float(row[f"val_dice_{label}"]) >= goal:
            return {"epoch": int(row["epoch"]), "seconds": round(elapsed, 3)}
    return None


def read_run(run_dir: Path, step: dict | None) -> dict:
    """One training run: Dice, seconds, images/s and the time to Dice 0.80 (partial runs too)."""
    rows = read_metrics(run_dir / "metrics.csv")
    summary = read_json(run_dir / "summary.json") or {}
    record = {
        "complete": bool(summary),
        "epochs_done": len(rows),
        "wall_s": step.get("seconds") if step else None,
        f"time_to_dice_{DICE_GOAL:.2f}": time_to_dice(rows) if rows and f"val_dice_{LABEL}" in rows[0] else None,
        "epoch_seconds_sum": round(sum(float(row["seconds"]) for row in rows), 3),
    }
    if rows:
        last = rows[-1]
        record["final_val_dice"] = {key[len("val_dice_"):]: float(value) for key, value in last.items()
                                    if key.startswith("val_dice_")}
        trained = [key for key in last if key.startswith("trained_val_dice_")]
        if trained:  # an --ema run: the weights before averaging, for comparison
            record["trained_weights"] = {key[len("trained_val_dice_"):]: {
                "final": float(last[key]), "best": max(float(row[key]) for row in rows)} for key in trained}
    evaluations = read_evaluations(run_dir)
    if evaluations:
        record["evaluations"] = evaluations
    for key in ("best_val_dice", "best_epoch", "epochs", "seconds", "train_images_per_second", "n_train", "n_val",
                "device", "precision", "val_patients"):
        if key in summary:
            record[key] = summary[key]
    return record


#: Figures read from each ``rvseg evaluate`` summary: name -> where in a label's summary.
EVALUATION_FIGURES = {
    **{metric: ("overall", "metrics", metric, "mean") for metric in ("dice", "hd", "hd95")},
    **{f"dice_{level}": ("by_slice_level", level, "metrics", "dice", "mean") for level in ("base", "mid", "apex")},
}


def read_evaluations(run_dir: Path) -> dict:
    """``rvseg evaluate`` results in ``RUN/eval-<variant>/``: variant -> label -> mean Dice, HD, HD95 (mm or
    px) and the Dice of the basal, mid and apical thirds of the stacks."""
    evaluations = {}
    for folder in sorted(run_dir.glob("eval-*")):
        summary = read_json(folder / "summary.json") or {}
        evaluations[folder.name[len("eval-"):]] = {
            label: {name: nested(data, *where) for name, where in EVALUATION_FIGURES.items()}
            for label, data in summary.get("labels", {}).items()}
    return evaluations


#: Per-run training figures averaged over the folds: where in the run record, and the name in the summary.
FOLD_TRAINING_FIGURES = {("best_val_dice",): "best_val_dice", ("final_val_dice",): "final_val_dice",
                         ("trained_weights", "best"): "trained_best_val_dice",
                         ("trained_weights", "final"): "trained_final_val_dice"}


def cross_validation(training: dict) -> dict:
    """Mean over the folds of each ``accuracy-<config>-fold<k>`` run.

    ``variant -> label -> metric -> mean`` for the ``rvseg evaluate`` results (over the folds that have that
    evaluation, counted in ``folds_per_variant``: a run cut off by its time limit is scored at the SGDR cycle
    ends it reached), and under ``training`` the finished runs' own best and final val Dice per label (with
    ``--ema``, also the trained weights'); ``folds`` counts the finished runs.
    """
    groups: dict[str, list[dict]] = {}
    for name, run in training.items():
        if name.startswith("accuracy-") and "-fold" in name:
            groups.setdefault(name.rsplit("-fold", 1)[0], []).append(run)
    means = {}
    for name, every_run in groups.items():
        runs = [run for run in every_run if run.get("complete")]
        means[name] = {"folds": len(runs), "folds_per_variant": {}}
        evaluations = [run.get("evaluations", {}) for run in every_run]
        for variant in sorted({variant for evaluation in evaluations for variant in evaluation}):
            scored = [evaluation[variant] for evaluation in evaluations if variant in evaluation]
            means[name]["folds_per_variant"][variant] = len(scored)
            for label in scored[0]:
                for metric in EVALUATION_FIGURES:
                    values = [v for v in (nested(f, label, metric) for f in scored) if v is not None]
                    if values:
                        means[name].setdefault(variant, {}).setdefault(label, {})[metric] = statistics.mean(values)
        for (key, *inner), figure in FOLD_TRAINING_FIGURES.items():
            per_label: dict[str, list[float]] = {}
            for run in runs:
                for label, value in (run.get(key) or {}).items():
                    value = nested(value, *inner) if inner else value
                    if value is not None:
                        per_label.setdefault(label, []).append(value)
            if per_label:
                means[name].setdefault("training", {})[figure] = {
                    label: statistics.mean(values) for label, values in per_label.items()}
        if not runs and not means[name]["folds_per_variant"]:
            del means[name]
    return means


def target(value, goal, higher_is_better: bool = True) -> dict | None:
    if value is None:
        return None
    return {"value": value, "goal": goal, "met": value >= goal if higher_is_better else value <= goal}


def nested(data, *keys):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def targets(bench: dict, peer: dict, training: dict) -> dict:
    loop = nested(bench, LOOP_BENCH, "loop", "images_per_s")
    peer_rate = nested(peer, PEER, "peer", "images_per_s")
    small = {name: nested(bench, name, "raw", "step_ms") for name in SMALL_STEP}
    eager_ms = small[SMALL_STEP[0]]
    return {
        "loop_over_raw": target(nested(bench, LOOP_BENCH, "ratios", "loop_over_raw"), LOOP_OVER_RAW_GOAL),
        "loop_no_augment_over_raw": nested(bench, LOOP_BENCH, "ratios", "loop-noaug_over_raw"),
        "rvsc_loop_over_raw": {name: target(nested(bench, name, "ratios", "loop_over_raw"), LOOP_OVER_RAW_GOAL)
                               for name in SMALL_STEP},
        "loop_over_peer": target(loop / peer_rate if loop and peer_rate else None, LOOP_OVER_PEER_GOAL),
        "baseline_seconds": {name: target(run.get("seconds") if run.get("complete") else None, BASELINE_SECONDS_GOAL,
                                          higher_is_better=False)
                             for name, run in ((name, training.get(name, {})) for name in BASELINE_RUNS)},
        "baseline_wall_s": {name: training.get(name, {}).get("wall_s") for name in BASELINE_RUNS},
        f"time_to_dice_{DICE_GOAL:.2f}": {name: run.get(f"time_to_dice_{DICE_GOAL:.2f}")
                                          for name, run in training.items()},
        "small_image_step_ms": small,
        "small_image_speedup": {name: eager_ms / ms for name, ms in small.items()
                                if ms and eager_ms and name != SMALL_STEP[0]},
        "cross_validation": cross_validation(training),
    }


def read_sweep(folder: Path) -> dict:
    """One sweep folder: how many runs reached each status, and its results.csv rows."""
    rows = read_metrics(folder / "results.csv")
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.get("status", "?")] = by_status.get(row.get("status", "?"), 0) + 1
    return {"runs": len(rows), "by_status": by_status, "rows": rows}


def run_folders(folder: Path) -> list[Path]:
    return sorted(run for run in folder.iterdir() if run.is_dir()) if folder.is_dir() else []


def collect(work: Path, keep: Path | None, mode: str, started: str, elapsed: float | None,
            budget: float | None) -> dict:
    steps = read_steps(work)
    by_name = {step["name"]: step for step in steps}
    results = {name: read_json(path) for name, path in
               ((path.stem, path) for path in sorted((work / "json").glob("*.json")))}
    bench = {name: data for name, data in results.items() if name.startswith("bench-") and data}
    peer = {name: data for name, data in results.items() if name.startswith("peer-") and data}
    training = {run.name: read_run(run, by_name.get(run.name)) for run in run_folders(work / "runs")}
    sweeps = {}
    if keep is not None:
        for run in run_folders(keep / "accuracy"):
            training[f"accuracy-{run.name}"] = read_run(run, by_name.get(f"accuracy-{run.name}"))
        sweeps = {folder.name: read_sweep(folder) for folder in run_folders(keep / "sweeps")}
    return {"mode": mode, "started_utc": started, "elapsed_s": elapsed, "budget_s": budget,
            "environment": results.get("env"), "steps": steps, "bench": bench, "peer": peer,
            "training": training, "sweeps": sweeps, "targets": targets(bench, peer, training)}


def report(results: dict) -> str:
    """A short plain-text account of the run, for the log and for BENCHMARKS.md."""
    env = results.get("environment") or {}
    lines = [f"rvseg GPU check ({results['mode']}), {results['started_utc']}: {env.get('device', 'no CUDA device')}, "
             f"torch {env.get('torch', '?')}, {results['elapsed_s']} s of a {results['budget_s']} s budget"]
    for step in results["steps"]:
        note = f" ({step['note']})" if step.get("note") else ""
        lines.append(f"  {step['name']:28s} {step['status']:8s} {step['seconds']:>8} s{note}")
    for name, data in {**results["bench"], **results["peer"]}.items():
        figures = []
        for part, unit, key in (("raw", "img/s", "images_per_s"), ("peer", "img/s", "images_per_s"),
                                ("loop", "img/s", "images_per_s"), ("loop-noaug", "img/s", "images_per_s"),
                                ("eval", "slices/s", "slices_per_s"), ("predict", "ms/series", "series_ms")):
            if part in data:
                figures.append(f"{part} {data[part][key]:.1f} {unit}")
        errors = "; ".join(f"{part} FAILED" for part in data.get("errors", {}))
        lines.append(f"  {name}: {', '.join(figures)}{'; ' + errors if errors else ''}")
    for name, run in results["training"].items():
        best = ", ".join(f"{label} {dice:.4f}" for label, dice in run.get("best_val_dice", {}).items()) or "none"
        reached = run.get(f"time_to_dice_{DICE_GOAL:.2f}")
        when = f"at epoch {reached['epoch']} after {reached['seconds']:.1f} s" if reached else "not reached"
        lines.append(f"  {name}: best val Dice {best} ({run['epochs_done']} epochs), {run.get('seconds')} s loop / "
                     f"{run.get('wall_s')} s wall, {run.get('train_images_per_second')} img/s, {LABEL} Dice "
                     f"{DICE_GOAL} {when}")
    for name, sweep in results.get("sweeps", {}).items():
        lines.append(f"  sweep {name}: {sweep['runs']} runs, {sweep['by_status']}")
    lines.append("  targets: " + json.dumps(results["targets"], default=str))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--keep", type=Path, help="gpu_check.sh's keep folder (accuracy runs, sweeps)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--mode", default="full")
    parser.add_argument("--started", default="")
    parser.add_argument("--elapsed", type=float)
    parser.add_argument("--budget", type=float)
    parser.add_argument("--print", action="store_true", help="also print a plain-text report")
    args = parser.parse_args(argv)
    results = collect(args.work, args.keep, args.mode, args.started, args.elapsed, args.budget)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(args.out)
    if args.print:
        print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
