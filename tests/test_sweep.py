"""``rvseg sweep``: SPEC parsing and presets, run-folder claims, recovery of dead trials, and real
sweeps at tiny CPU scale: every preset end to end, 2 workers, a SIGKILL mid-trial and a rerun, pruning,
and two processes sharing one PostgreSQL study."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from rvseg.errors import ConfigError, DataError
from rvseg.report.html import write_report
from rvseg.sweep import (
    INTERRUPTED_ATTR,
    OWNER_ATTR,
    SweepOptions,
    next_action,
    open_storage,
    open_study,
    record_spec,
    recover,
    resolve_spec,
    run_sweep,
    storage_url,
)
from rvseg.sweeps.claims import Owner, RunClaim, process_start_ticks
from rvseg.sweeps.results import read_results
from rvseg.sweeps.spec import MAX_RUN_NAME, make_overrides, parse_spec, run_name
from rvseg.train.progress import read_metrics

#: Every tiny sweep: a 4-wide, 2-deep U-Net on 32 x 32 images, on the CPU.
TINY = ["--width", "4", "--depth", "2", "--batch-size", "8", "--device", "cpu"]
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:54329/rvseg"


#: One thread per trainer: the tests' trainers are tiny, and CI machines are shared.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rvseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rvseg", *args], capture_output=True, text=True, timeout=600,
                          env=ENV)


@pytest.fixture(scope="session")
def phantom_source(tmp_path_factory) -> Path:
    """A raw RVSC-layout phantom: 3 patients x 3 slices x 4 frames (16 annotated slices)."""
    from rvseg.data.phantom import write_phantom

    out = tmp_path_factory.mktemp("sweep-phantom") / "phantom"
    write_phantom(out, patients=3, slices=3, frames=4, seed=3)
    return out


@pytest.fixture(scope="session")
def prepared(phantom_source, tmp_path_factory) -> Path:
    """The phantom prepared at 32 x 32."""
    from rvseg.data.prepare import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("sweep-prepared") / "dataset"
    prepare(phantom_source, out, PrepareOptions(size=(32, 32)))
    return out


@pytest.fixture(scope="session")
def held_out(tmp_path_factory) -> Path:
    """A test set of patients the phantom does not have (S00, S01), prepared like ``prepared``."""
    from helpers import synthetic_report

    from rvseg.data.prepare import PrepareOptions, write_prepared

    out = tmp_path_factory.mktemp("sweep-test-set") / "dataset"
    write_prepared(synthetic_report(n_patients=2, per_patient=4), out, PrepareOptions(size=(32, 32)))
    return out


def write_spec(path: Path, dataset: Path, **changes) -> Path:
    spec = {"dataset": str(dataset), "base": {"epochs": 1, "width": 4, "depth": 2, "batch_size": 8, "device": "cpu"},
            "space": {"lr": [0.01, 0.001]}, "objective": "best_val_dice", "sampler": "grid"}
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep_in_process(spec, out: Path, **options) -> dict:
    """``run_sweep`` here (no ``rvseg sweep`` process to start); trainers still run as subprocesses. Optuna's
    log level is the caller's again afterwards (a notebook's own studies keep their log)."""
    before = optuna.logging.get_verbosity()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        summary = run_sweep(spec, out, SweepOptions(verbose=False, **options))
    assert optuna.logging.get_verbosity() == before
    return summary


def tiny_overrides(**changes):
    return make_overrides(**{"epochs": 1, "width": 4, "depth": 2, "batch_size": 8, "device": "cpu", **changes})


def train_events(run_folder: Path) -> list[dict]:
    return [json.loads(line) for line in (run_folder / "sweep-log.jsonl").read_text().splitlines()]


def check_complete(sweep: Path, n_runs: int) -> list[dict]:
    """results.csv holds n_runs distinct complete runs, each trained exactly once."""
    rows = read_results(sweep / "results.csv")
    assert len(rows) == n_runs
    assert len({row["run"] for row in rows}) == n_runs
    assert {row["status"] for row in rows} == {"complete"}
    for row in rows:
        folder = Path(row["folder"])
        assert folder.parent == sweep / "runs"
        assert len(train_events(folder)) == 1, f"{folder.name} was trained more than once"
        assert [r["epoch"] for r in read_metrics(folder)] == list(range(1, int(row["epochs_done"]) + 1))
        assert 0.0 <= float(row["best_val_dice"]) <= 1.0
        assert float(row["seconds"]) > 0
    return rows


# ---------------------------------------------------------------- SPEC, presets, names


def test_presets_have_the_study_grids(tmp_path):
    lr_grid = resolve_spec(preset=("lr-grid", str(tmp_path)))
    assert len(lr_grid.grid_cells()) == 2 * 2 * 3 * 4
    assert lr_grid.seeds == [0] and lr_grid.base["loss"] == "dice"
    losses = resolve_spec(preset=("losses", str(tmp_path)))
    assert [c["loss"] for c in losses.grid_cells()] == ["dice", "dice-bce", "dice-bce-inverse", "focal",
                                                       "switching-0.25", "switching-0.5", "switching-0.75"]
    assert losses.seeds == [0, 1, 2]
    train, _ = losses.settings({"loss": "switching-0.25"})
    assert train == {"loss": "switching", "switch_lambda": 0.25}
    assert losses.train_config({"loss": "focal"}, seed=2).focal_gamma == 2.0
    preprocessing = resolve_spec(preset=("preprocessing", str(tmp_path)))
    assert len(preprocessing.grid_cells()) == 6 and preprocessing.needs_variants()
    assert preprocessing.settings({"mask_style": "grey", "channels": 3}) == ({}, {"mask_style": "grey", "channels": 3})
    baseline = resolve_spec(preset=("baseline", str(tmp_path)))
    configs = [baseline.train_config(cell, 0) for cell in baseline.grid_cells()]
    assert [(c.optimizer, c.loss, c.lr, c.epochs, c.batch_size) for c in configs] == [
        ("adam", "dice", 5e-4, 100, 16), ("sgd", "dice", 5e-4, 100, 16), ("adam", "switching", 5e-4, 100, 16)]


def test_overrides_scale_a_preset_down_and_are_recorded(tmp_path):
    overrides = make_overrides(epochs=2, size=[32, 32], width=8, repeats=1, only=["lr=0.01,0.0001"],
                               assignments=["val_patients=P01"])
    spec = resolve_spec(preset=("lr-grid", str(tmp_path)), overrides=overrides)
    assert spec.base["epochs"] == 2 and spec.base["width"] == 8 and spec.base["val_patients"] == ["P01"]
    assert spec.scale["epochs"] == {"preset": 100, "used": 2}
    assert spec.scale["size"] == {"preset": "native", "used": [32, 32]}
    assert spec.prepare == {"size": [32, 32]} and spec.needs_variants()
    assert [a.values for a in spec.space if a.name == "lr"] == [[0.01, 0.0001]]
    assert spec.restricted == {"lr": ["0.01", "0.0001"]}
    assert len(spec.grid_cells()) == 2 * 2 * 2 * 4
    with pytest.raises(ConfigError, match="not all among the axis values"):
        resolve_spec(preset=("lr-grid", str(tmp_path)), overrides=make_overrides(only=["lr=0.5"]))
    with pytest.raises(ConfigError, match="unknown option"):
        make_overrides(assignments=["learning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"--set epochs=\[1: not a YAML value \(while parsing a flow sequence"):
        make_overrides(assignments=["epochs=[1"])


@pytest.mark.parametrize("change, message", [
    ({"space": {"lr": {"low": 0.001, "high": 0.1}}}, "a grid needs a list"),
    ({"space": {"seed": [1, 2]}}, "taken by results.csv"),
    ({"space": {"colour": [1, 2]}}, "neither a training option"),
    ({"space": {"channels": {"low": 1, "high": 3}}, "sampler": "tpe", "n_trials": 2}, "needs a list of values"),
    ({"sampler": "tpe"}, "needs n_trials"),
    ({"n_trials": 3}, "applies to sampler tpe"),
    ({"objective": "best_dice"}, "objective must be one of"),
    ({"objective": "test_dice"}, "needs a test"),
    ({"space": {"loss": ["dice", "dice"]}}, "lists a value twice"),
    ({"space": {"lr": ["fast"]}}, "not a valid float"),
    ({"base": {"pause_after": 3}}, "the sweep controls it"),
    ({"pruner": "hyperband"}, "pruner must be one of"),
    ({"space": {"intensity": [0.1, 1.5]}}, "intensity must be in \\[0, 1\\), not 1.5"),
    ({"repeats": 0}, "repeats must be"),
    ({"epochs": 3}, "unknown sweep spec key"),
    ({"table": {"rows": ["learning_rate"]}}, "table: rows .* must name axes of the space \\(lr\\)"),
    ({"table": {"rows": ["lr"], "columns": "fraction"}}, "must name axes"),
    ({"table": {"values": "best_val_dice"}}, "table: values must be a list"),
    ({"table": {"row": ["lr"]}}, "table: must be a mapping with some of"),
    ({"prepare": {"size": "big"}}, "size must be two whole numbers"),
    ({"space": {"lr": {"low": 0.001, "high": 0.01, "step": -1}}, "sampler": "tpe", "n_trials": 2}, "step must be"),
    ({"space": {"lr": {"low": 0.001, "high": 0.01, "step": "abc"}}, "sampler": "tpe", "n_trials": 2}, "step must be"),
    ({"space": {"lr": {"low": 0.001, "high": 0.01, "log": True, "step": 0.001}}, "sampler": "tpe", "n_trials": 2},
     "a log range takes no step"),
    ({"space": {"lr": {"low": 0.001, "high": 0.01, "log": "yes_please"}}, "sampler": "tpe", "n_trials": 2},
     "log must be true or false"),
])
def test_bad_specs_are_refused_with_a_clear_message(change, message):
    data = {"dataset": "/data", "space": {"lr": [0.01, 0.001]}, **change}
    with pytest.raises(ConfigError, match=message):
        parse_spec(data)


def test_print_spec_round_trips_through_a_spec_file(tmp_path, prepared):
    result = rvseg("sweep", "--preset", "losses", str(prepared), "--epochs", "3", "--only",
                   "loss=dice,focal", "--print-spec")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert list(printed["space"]["loss"]) == ["dice", "focal"] and printed["base"]["epochs"] == 3
    path = tmp_path / "losses.yaml"
    path.write_text(result.stdout)
    again = rvseg("sweep", str(path), "--print-spec")
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(again.stdout) == printed


def test_run_names_are_deterministic_exact_and_bounded():
    assert run_name({"optimizer": "adam", "lr": 0.001}, 0) == "optimizer-adam__lr-0.001__seed-0"
    assert run_name({"lr": 1e-5, "fraction": 1.0}, 2) == "lr-1e-05__fraction-1__seed-2"
    # TPE floats that print alike at 6 digits still get distinct folders.
    assert run_name({"lr": 0.00123456789}, 0) != run_name({"lr": 0.00123456788}, 0)
    assert run_name({"loss": "a/b c"}, 0) == "loss-a_b_c__seed-0"
    long_a = run_name({f"axis{i}": "x" * 20 for i in range(10)}, 0)
    long_b = run_name({f"axis{i}": "x" * 20 for i in range(10)}, 1)
    assert len(long_a) == MAX_RUN_NAME and long_a != long_b


def test_a_sweep_folder_refuses_a_different_spec(tmp_path, prepared):
    spec = parse_spec({"dataset": str(prepared), "space": {"lr": [0.01]}, "base": {"epochs": 2}})
    record_spec(spec, tmp_path, "s")
    record_spec(spec, tmp_path, "s")  # the same spec again: fine
    moved = parse_spec({"dataset": str(prepared), "space": {"lr": [0.01]}, "base": {"epochs": 2, "device": "cpu"}})
    record_spec(moved, tmp_path, "s")  # where it runs may change
    changed = parse_spec({"dataset": str(prepared), "space": {"lr": [0.01]}, "base": {"epochs": 3}})
    with pytest.raises(ConfigError, match="different spec.*base"):
        record_spec(changed, tmp_path, "s")
    (tmp_path / "sweep.json").write_text('{"spec": {"dataset"')  # cut short by a full disk, say
    with pytest.raises(DataError, match="cannot read this JSON file"):
        record_spec(spec, tmp_path, "s")


def test_a_sweep_moved_with_its_data_continues_there(tmp_path, prepared):
    """A sweep folder moved elsewhere with its prepared set (another machine, an unpacked archive; the
    old path is gone) is the same sweep: finished runs are reused, never trained again; other data is
    refused. A folder from before sweep.json kept the data's identity knows it only by its old path,
    and says so instead of claiming a different spec."""
    import shutil

    shutil.copytree(prepared, tmp_path / "here" / "data")
    (tmp_path / "specs").mkdir()
    first = write_spec(tmp_path / "specs" / "first.yaml", tmp_path / "here" / "data", space={"lr": [0.01]})
    sweep_in_process(resolve_spec(first), tmp_path / "here" / "sweep")
    shutil.move(tmp_path / "here", tmp_path / "elsewhere")
    moved = resolve_spec(write_spec(tmp_path / "specs" / "first.yaml", tmp_path / "elsewhere" / "data",
                                    space={"lr": [0.01]}))
    summary = sweep_in_process(moved, tmp_path / "elsewhere" / "sweep")
    assert summary["by_status"] == {"complete": 1}
    (run,) = (tmp_path / "elsewhere" / "sweep" / "runs").iterdir()
    assert len(train_events(run)) == 1  # reused, not retrained

    other = tmp_path / "other-data"
    shutil.copytree(prepared, other)
    meta = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps({**meta, "content_hash": "0" * 16}))
    with pytest.raises(ConfigError, match="different spec.*dataset"):
        record_spec(resolve_spec(write_spec(other / "first.yaml", other, space={"lr": [0.01]})),
                    tmp_path / "elsewhere" / "sweep", "s")

    record = json.loads((tmp_path / "elsewhere" / "sweep" / "sweep.json").read_text())
    legacy = {k: v for k, v in record.items() if k != "identity"}
    legacy["spec"]["dataset"] = str(tmp_path / "gone")
    (tmp_path / "elsewhere" / "sweep" / "sweep.json").write_text(json.dumps(legacy))
    with pytest.raises(ConfigError, match=r"names its data only by a path that holds no prepared set here \(.*gone\)"):
        record_spec(moved, tmp_path / "elsewhere" / "sweep", "s")


def test_a_sweep_keeps_its_study_across_changes_of_the_default_name(tmp_path, prepared):
    """sweep.json records the study's name; a folder from before that (older default names hashed
    the data's path) finds its study in the storage by the SPEC it was made for."""
    spec = resolve_spec(write_spec(tmp_path / "s.yaml", prepared, space={"lr": [0.01]}))
    out = tmp_path / "sweep"
    sweep_in_process(spec, out, study_name="s-oldfingerprint")
    assert json.loads((out / "sweep.json").read_text())["study"] == "s-oldfingerprint"
    summary = sweep_in_process(spec, out)
    assert summary["study"] == "s-oldfingerprint"
    legacy = json.loads((out / "sweep.json").read_text())
    del legacy["study"]
    (out / "sweep.json").write_text(json.dumps(legacy))
    summary = sweep_in_process(spec, out)
    assert summary["study"] == "s-oldfingerprint" and summary["by_status"] == {"complete": 1}
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{out / 'study.db'}")] == [
        "s-oldfingerprint"]


def test_missing_or_unprepared_data_fails_before_anything_is_written(tmp_path, phantom_source):
    with pytest.raises(DataError, match="no such data set"):
        run_sweep(parse_spec({"dataset": str(tmp_path / "nowhere"), "space": {"lr": [0.01]}}), tmp_path / "a")
    with pytest.raises(DataError, match="not a prepared data set.*--size"):
        run_sweep(parse_spec({"dataset": str(phantom_source), "space": {"lr": [0.01]}}), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- claims and recovery


HOLD_CLAIM = """
import sys, time
from rvseg.sweeps.claims import RunClaim
with RunClaim(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_claim_is_exclusive_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(tmp_path / "run")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waits = []
        killer = subprocess.Popen([sys.executable, "-c", f"import time, os; time.sleep(1.5); os.kill({holder.pid}, 9)"])
        started = time.monotonic()
        with RunClaim(tmp_path / "run", on_wait=waits.append):
            waited = time.monotonic() - started
        killer.wait()
    finally:
        holder.kill()
        holder.wait()
    assert waited >= 1.0, "the claim was taken while its holder lived"
    assert len(waits) == 1 and f"pid {holder.pid}" in waits[0]


def dead_owner() -> dict:
    process = subprocess.Popen(["true"])
    process.wait()
    return {**Owner.current().to_dict(), "pid": process.pid, "started": 1}


def test_recover_requeues_the_point_of_a_trial_whose_worker_died(tmp_path, prepared):
    spec = parse_spec({"dataset": str(prepared), "space": {"lr": [0.01, 0.001]}})
    study = open_study(spec, storage_url(None, tmp_path), "recover")
    dead = study.ask()
    dead.suggest_categorical("lr", [0.01, 0.001])
    dead.set_user_attr(OWNER_ATTR, dead_owner())
    alive = study.ask()
    alive.suggest_categorical("lr", [0.01, 0.001])
    alive.set_user_attr(OWNER_ATTR, Owner.current().to_dict())
    assert next_action(study, spec) == "wait"  # every point is running: no duplicate is started

    assert recover(study, spec, grace_s=300) == [dead.number]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert trials[dead.number].user_attrs[INTERRUPTED_ATTR]
    assert trials[alive.number].state == optuna.trial.TrialState.RUNNING
    retry = [t for t in trials.values() if t.state == optuna.trial.TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == trials[dead.number].params
    assert retry[0].system_attrs["grid_id"] == trials[dead.number].system_attrs["grid_id"]
    assert next_action(study, spec) == "run"
    assert recover(study, spec, grace_s=300) == []  # the point is queued once


def test_another_machines_trial_is_stale_only_after_the_grace_period(tmp_path, prepared):
    spec = parse_spec({"dataset": str(prepared), "space": {"lr": [0.01]}})
    study = open_study(spec, storage_url(None, tmp_path), "grace")
    trial = study.ask()
    trial.suggest_categorical("lr", [0.01])
    trial.set_user_attr(OWNER_ATTR, {"host": "elsewhere", "boot": "other", "pid": 1, "started": 1})
    trial.set_user_attr("rvseg_heartbeat", time.time() - 100)
    assert recover(study, spec, grace_s=300) == []
    assert recover(study, spec, grace_s=50) == [trial.number]


# ---------------------------------------------------------------- real sweeps


def test_lr_grid_with_two_workers_completes_without_duplicates(tmp_path, prepared):
    out = tmp_path / "lr"
    result = rvseg("sweep", "--preset", "lr-grid", str(prepared), "--out", str(out), "--epochs", "1", *TINY,
                   "--only", "scheduler=cosine", "--only", "lr=0.01", "--only", "fraction=1.0,0.4", "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = check_complete(out, 4)
    assert {(r["optimizer"], r["fraction"]) for r in rows} == {("adam", "1"), ("adam", "0.4"), ("sgd", "1"),
                                                               ("sgd", "0.4")}
    assert "[worker 0]" in result.stdout and "[worker 1]" in result.stdout
    # Finished runs keep best.pt; last.pt (resume state, 3x larger at full scale) goes, in every worker.
    for row in rows:
        assert (Path(row["folder"]) / "best.pt").is_file() and not (Path(row["folder"]) / "last.pt").exists()
    trials = json.loads((out / "trials.json").read_text())["trials"]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert {tuple(sorted(t["params"].items())) for t in complete} == {
        tuple(sorted({"optimizer": o, "scheduler": "cosine", "lr": 0.01, "fraction": f}.items()))
        for o in ("adam", "sgd") for f in (1.0, 0.4)}
    # The study's 40 % training share trains on fewer slices than 100 %.
    summaries = {r["fraction"]: json.loads((Path(r["folder"]) / "summary.json").read_text()) for r in rows}
    assert summaries["0.4"]["n_train"] < summaries["1"]["n_train"]

    report, markdown = write_report(out, tmp_path / "lr.html")
    text = markdown.read_text()
    assert "Table 1" in text and "fraction 100% val Dice" in text and "fraction 40% train loss" in text
    assert "★" in text and "| epochs | 100 | 1 |" in text
    assert "<img" in report.read_text()


def test_losses_preset_reports_mean_and_sd_over_seeds_on_a_test_set(tmp_path, prepared, held_out):
    out = tmp_path / "losses"
    spec = resolve_spec(preset=("losses", str(prepared)),
                        overrides=tiny_overrides(repeats=2, only=["loss=dice,switching-0.25"], test=str(held_out)))
    sweep_in_process(spec, out, workers=2)
    rows = check_complete(out, 4)
    configs = {r["run"]: yaml.safe_load((Path(r["folder"]) / "config.yaml").read_text()) for r in rows}
    assert {(c["loss"], c["seed"]) for c in configs.values()} == {
        (loss, seed) for loss in ("dice", "switching") for seed in (0, 1)}
    assert all(c["switch_lambda"] == 0.25 for c in configs.values() if c["loss"] == "switching")
    _, markdown = write_report(out, tmp_path / "losses.html")
    table = markdown.read_text().split("Table 2")[1].split("## ")[0]
    dice_rows = [line for line in table.splitlines() if line.startswith("| dice ")]
    assert len(dice_rows) == 1 and "±" in dice_rows[0]
    for metric in ("best_val_dice", "test_dice"):
        values = [float(r[metric]) for r in rows if r["loss"] == "dice"]
        mean = sum(values) / 2
        sd = abs(values[0] - values[1]) / math.sqrt(2)
        assert f"{mean:.3f} ± {sd:.3f}" in dice_rows[0]
    assert "| loss | val Dice | test Dice | val loss |" in table
    for row in rows:
        test = json.loads((Path(row["folder"]) / "test" / "summary.json").read_text())
        assert test["patients"] == ["S00", "S01"]  # only patients the run never saw
        assert float(row["test_dice"]) == pytest.approx(test["labels"]["endo"]["overall"]["metrics"]["dice"]["mean"],
                                                        abs=1e-6)


def test_preprocessing_prepares_each_variant_from_the_source(tmp_path, prepared):
    out = tmp_path / "pre"
    # A prepared set is accepted: the variants come from the source recorded in its dataset.json.
    spec = resolve_spec(preset=("preprocessing", str(prepared)),
                        overrides=tiny_overrides(size=[32, 32], only=["channels=3"]))
    sweep_in_process(spec, out, workers=2)
    rows = check_complete(out, 3)
    assert sorted(r["mask_style"] for r in rows) == ["filled", "grey", "outline"]
    for row in rows:
        data = json.loads((Path(row["folder"]) / "trial.json").read_text())["dataset"]
        meta = json.loads((Path(data) / "dataset.json").read_text())
        assert Path(data).parent == out / "data"
        assert meta["options"]["mask_style"] == row["mask_style"]
        assert meta["options"]["channels"] == int(row["channels"])
        assert meta["shape"][1:] == [int(row["channels"]), 32, 32]
    _, markdown = write_report(out, tmp_path / "pre.html")
    assert "| outline | " in markdown.read_text() and "channels 3 val Dice" in markdown.read_text()


def test_baseline_preset_from_a_raw_source(tmp_path, phantom_source):
    out = tmp_path / "base"
    result = rvseg("sweep", "--preset", "baseline", str(phantom_source), "--out", str(out), "--epochs", "2", *TINY,
                   "--size", "32", "32", "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = check_complete(out, 3)
    assert [r["setup"] for r in rows] == ["adam-dice", "sgd-dice", "adam-switching"]
    assert all(r["epochs_done"] == "2" for r in rows)
    assert "best run:" in result.stdout
    # The same sweep again: nothing is trained twice.
    spec = resolve_spec(preset=("baseline", str(phantom_source)), overrides=tiny_overrides(epochs=2, size=[32, 32]))
    sweep_in_process(spec, out)
    assert check_complete(out, 3) == rows
    _, markdown = write_report(out, tmp_path / "base.html")
    assert "| adam-switching |" in markdown.read_text()


def test_kill_mid_trial_and_rerun_resumes_the_run(tmp_path, prepared):
    spec = write_spec(tmp_path / "kill.yaml", prepared, base={"epochs": 40, "width": 4, "depth": 2, "batch_size": 8,
                                                               "device": "cpu", "fraction": 0.4, "augment": False})
    out = tmp_path / "sweep"
    sweep = subprocess.Popen([sys.executable, "-m", "rvseg", "sweep", str(spec), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("runs/*/last.pt")) and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sweep.poll() is None, "the sweep ended before a checkpoint appeared"
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
    finally:
        sweep.kill()
    interrupted = next(out.glob("runs/*/last.pt")).parent
    with RunClaim(interrupted):
        pass  # the orphaned trainer got SIGTERM from the kernel: its claim ends once it has saved and exited
    assert not (interrupted / "summary.json").is_file(), "the run finished before the kill"
    saved_epoch = torch.load(interrupted / "last.pt", weights_only=True)["epoch"]
    before = [r for r in read_metrics(interrupted) if r["epoch"] <= saved_epoch]

    sweep_in_process(resolve_spec(spec), out)
    rows = read_results(out / "results.csv")
    assert sorted(r["lr"] for r in rows) == ["0.001", "0.01"] and {r["status"] for r in rows} == {"complete"}
    events = train_events(interrupted)
    assert len(events) == 2 and events[1]["after_epoch"] >= len(before)
    after = read_metrics(interrupted)
    assert [r["epoch"] for r in after] == list(range(1, 41))
    assert after[:len(before)] == before  # the epochs before the kill were kept, not retrained
    assert "epoch 40/40" in (interrupted / "train.log").read_text()  # a run's progress, one line per epoch
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["interrupted"] for t in trials if t["state"] == "FAIL"] == [True]
    assert sum(t["state"] == "COMPLETE" for t in trials) == 2


def test_threshold_pruner_stops_trials_from_their_epoch_metrics(tmp_path, prepared):
    spec = write_spec(tmp_path / "prune.yaml", prepared, base={"epochs": 300, "width": 4, "depth": 2, "batch_size": 8,
                                                                "device": "cpu", "fraction": 0.4, "augment": False},
                      space={"lr": [0.01]}, pruner={"threshold": {"lower": 2.0, "n_warmup_steps": 2}})
    out = tmp_path / "sweep"
    summary = sweep_in_process(resolve_spec(spec), out)
    assert summary["by_status"] == {"pruned": 1}
    row, = read_results(out / "results.csv")
    assert row["status"] == "pruned"
    # Optuna's ThresholdPruner may prune from step == n_warmup_steps (it skips only steps below it), so
    # the earliest stop is after epoch 2; how much later depends on when the worker's poll sees the epochs.
    epochs = int(row["epochs_done"])
    assert 2 <= epochs < 300
    assert json.loads((Path(row["folder"]) / "pruned.json").read_text())["after_epoch"] >= 2
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["PRUNED"]


def test_a_failing_run_is_recorded_and_not_retried_unless_asked(tmp_path, prepared):
    spec = write_spec(tmp_path / "fail.yaml", prepared, base={"epochs": 1, "width": 4, "depth": 2, "device": "cpu",
                                                               "val_patients": ["P01", "P02", "P03"]},
                      space={"lr": [0.01]})
    out = tmp_path / "sweep"
    result = rvseg("sweep", str(spec), "--out", str(out))
    assert result.returncode == 1
    rows = read_results(out / "results.csv")
    assert [r["status"] for r in rows] == ["failed"]
    assert "no training patient" in rows[0]["error"]
    assert sweep_in_process(resolve_spec(spec), out)["by_status"] == {"failed": 1}
    assert len(train_events(Path(rows[0]["folder"]))) == 1  # not retried
    assert sweep_in_process(resolve_spec(spec), out, retry_failed=True)["by_status"] == {"failed": 1}
    assert len(train_events(Path(rows[0]["folder"]))) == 2


# ---------------------------------------------------------------- several machines: PostgreSQL


def unavailable(message: str) -> None:
    """Fail in CI, where .ci/run starts the server; skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def postgres_url():
    """A fresh database on the server .ci/postgres.sh starts (fails in CI when it is not running)."""
    base = os.environ.get("RVSEG_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        import psycopg2
    except ImportError as exc:
        unavailable(f"psycopg2 is not installed (pip install -e '.[dev]'): {exc}")
    try:
        admin = psycopg2.connect(base, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        unavailable(f"no PostgreSQL server at {base} (run .ci/postgres.sh): {exc}")
    admin.autocommit = True
    name = f"rvseg_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def test_two_processes_share_one_postgres_study(tmp_path, prepared, postgres_url):
    spec = write_spec(tmp_path / "pg.yaml", prepared, space={"lr": [0.01, 0.001], "optimizer": ["adam", "sgd"]})
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "rvseg", "sweep", str(spec), "--out", str(out), "--storage", postgres_url]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    rows = check_complete(out, 4)
    assert {(r["lr"], r["optimizer"]) for r in rows} == {(lr, o) for lr in ("0.01", "0.001") for o in ("adam", "sgd")}
    storage = open_storage(postgres_url)
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4
    assert not [t for t in study.trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)]
    owners = {train_events(Path(r["folder"]))[0]["owner"]["pid"] for r in rows}
    assert owners <= {first.pid, second.pid}
    print(f"runs trained by process: {sorted(owners)}; outputs:\n" + "\n".join(outputs))
    storage.engine.dispose()


def test_journal_storage_is_accepted(tmp_path, prepared):
    spec = parse_spec({"dataset": str(prepared), "space": {"lr": [0.01]},
                       "base": {"epochs": 1, "width": 4, "depth": 2, "device": "cpu"}})
    summary = sweep_in_process(spec, tmp_path / "sweep", storage=f"journal:{tmp_path / 'journal.log'}",
                               keep_last=True)
    assert summary["by_status"] == {"complete": 1}
    assert len(list((tmp_path / "sweep" / "runs").glob("*/last.pt"))) == 1  # --keep-last
    assert (tmp_path / "journal.log").stat().st_size > 0 and not (tmp_path / "sweep" / "study.db").exists()
    # The same folder with another storage or study would start a second search into it: refused.
    with pytest.raises(ConfigError, match="which sqlite.* does not have"):
        sweep_in_process(spec, tmp_path / "sweep")
    with pytest.raises(ConfigError, match="this sweep folder's study is"):
        sweep_in_process(spec, tmp_path / "sweep", storage=f"journal:{tmp_path / 'journal.log'}", study_name="other")


def test_options_only_the_trainer_knows_are_checked_before_anything_is_written(tmp_path, prepared):
    # A name the config knows is refused as the base's own option; the rest when each point is built.
    with pytest.raises(ConfigError, match="^unknown optimizer 'nosuch'; choose one of adam, adamw, sgd"):
        parse_spec({"dataset": str(prepared), "space": {"loss": ["dice", "focal"]},
                    "base": {"epochs": 1, "width": 4, "device": "cpu", "optimizer": "nosuch"}})
    for base in ({"device": "gpu"}, {"depth": 12}, {"dropout": 1.5}, {"folds": 4}):
        with pytest.raises(ConfigError, match="space point"):
            parse_spec({"dataset": str(prepared), "space": {"loss": ["dice", "focal"]},
                        "base": {"epochs": 1, "width": 4, "device": "cpu", **base}})
    result = rvseg("sweep", "--preset", "losses", str(prepared), "--out", str(tmp_path / "sweep"), "--epochs", "1",
                   "--set", "optimizer=nosuch", "--only", "loss=dice", "--repeats", "1")
    assert result.returncode == 2 and "unknown optimizer 'nosuch'" in result.stderr
    assert not (tmp_path / "sweep" / "sweep.json").exists()


def test_a_dead_worker_not_yet_reaped_counts_as_gone():
    # Worker 0 reaps its worker processes only when its own work ends: a killed one is a zombie until then.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    owner = replace(Owner.current(), pid=child.pid, started=process_start_ticks(child.pid))
    assert not owner.is_gone()
    deadline = time.time() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert owner.is_gone()
    finally:
        child.wait()
