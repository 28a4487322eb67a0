"""Collect what ``benchmarks/gpu_check.sh`` measured into one ``results.json``, with the issues' targets.

Standard library only (it runs after every step, also where a step broke the Python environment)::

    python benchmarks/gpu_summary.py --work WORK --out OUTDIR/results.json [--print]

Reads from the work folder: ``steps.jsonl`` (one line per step: name, status, rc, seconds, note),
``json/*.json`` (``env.json``, one ``rvseg bench --out`` result per ``bench-*`` step, the peer's
``peer-*.json``) and ``runs/<step>/`` (``summary.json`` and ``metrics.csv`` of each training run).
Writes ``{"mode", "started_utc", "elapsed_s", "budget_s", "environment", "steps", "bench", "peer",
"training", "targets"}``; every target is ``{"value", "goal", "met"}`` (or the raw figures where
the issue asks only for a report), and None where its steps did not finish.
"""

from __future__ import annotations

import argparse
import csv
import json
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
LOOP_BENCH, PEER, BASELINE_RUN = "bench-256-bf16-cl", "peer-256-bf16-cl", "train-default"
PRECISION_LADDER = ("bench-256-fp32", "bench-256-bf16", "bench-256-bf16-cl", "bench-256-bf16-cl-cudnn",
                    "bench-256-compile")
SMALL_STEP = ("bench-128-bf16-cl", "bench-128-cuda-graph", "bench-128-reduce-overhead")


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
    for key in ("best_val_dice", "best_epoch", "epochs", "seconds", "train_images_per_second", "n_train", "n_val",
                "device", "precision", "val_patients"):
        if key in summary:
            record[key] = summary[key]
    return record


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
    baseline = training.get(BASELINE_RUN, {})
    ladder = {name: nested(bench, name, "raw", "images_per_s") for name in PRECISION_LADDER}
    small = {name: nested(bench, name, "raw", "step_ms") for name in SMALL_STEP}
    eager_ms = small[SMALL_STEP[0]]
    return {
        "loop_over_raw": target(nested(bench, LOOP_BENCH, "ratios", "loop_over_raw"), LOOP_OVER_RAW_GOAL),
        "loop_no_augment_over_raw": nested(bench, LOOP_BENCH, "ratios", "loop-noaug_over_raw"),
        "rvsc_loop_over_raw": nested(bench, "bench-rvsc", "ratios", "loop_over_raw"),
        "loop_over_peer": target(loop / peer_rate if loop and peer_rate else None, LOOP_OVER_PEER_GOAL),
        "baseline_seconds": target(baseline.get("seconds") if baseline.get("complete") else None,
                                   BASELINE_SECONDS_GOAL, higher_is_better=False),
        "baseline_wall_s": baseline.get("wall_s"),
        f"time_to_dice_{DICE_GOAL:.2f}": {name: run.get(f"time_to_dice_{DICE_GOAL:.2f}")
                                          for name, run in training.items()},
        "raw_images_per_s_256": ladder,
        "small_image_step_ms_128": small,
        "small_image_speedup": {name: eager_ms / ms for name, ms in small.items()
                                if ms and eager_ms and name != SMALL_STEP[0]},
    }


def collect(work: Path, mode: str, started: str, elapsed: float | None, budget: float | None) -> dict:
    steps = read_steps(work)
    by_name = {step["name"]: step for step in steps}
    results = {name: read_json(path) for name, path in
               ((path.stem, path) for path in sorted((work / "json").glob("*.json")))}
    bench = {name: data for name, data in results.items() if name.startswith("bench-") and data}
    peer = {name: data for name, data in results.items() if name.startswith("peer-") and data}
    runs = work / "runs"
    training = {run.name: read_run(run, by_name.get(run.name)) for run in sorted(runs.iterdir())
                if run.is_dir()} if runs.is_dir() else {}
    return {"mode": mode, "started_utc": started, "elapsed_s": elapsed, "budget_s": budget,
            "environment": results.get("env"), "steps": steps, "bench": bench, "peer": peer,
            "training": training, "targets": targets(bench, peer, training)}


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
    lines.append("  targets: " + json.dumps(results["targets"], default=str))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--mode", default="full")
    parser.add_argument("--started", default="")
    parser.add_argument("--elapsed", type=float)
    parser.add_argument("--budget", type=float)
    parser.add_argument("--print", action="store_true", help="also print a plain-text report")
    args = parser.parse_args(argv)
    results = collect(args.work, args.mode, args.started, args.elapsed, args.budget)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(args.out)
    if args.print:
        print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
