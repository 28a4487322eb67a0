"""The training loop: every flag does what it says, runs resume exactly, survive signals and NaNs."""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import synthetic_report

from rvseg.cli import main, parse_arguments
from rvseg.data.dataset import load_dataset
from rvseg.data.prepare import PrepareOptions, write_prepared
from rvseg.data.targets import decision_threshold, encode_targets
from rvseg.errors import ConfigError, DataError
from rvseg.losses import build_loss
from rvseg.models import build_model
from rvseg.train import loop
from rvseg.train.checkpoint import load_checkpoint, model_from_checkpoint
from rvseg.train.config import TrainConfig, load_config, overrides_from_args
from rvseg.train.loop import TrainingDiverged, train
from rvseg.train.runtime import Runtime, any_rank

TINY = dict(width=4, depth=2, epochs=2, batch_size=8, lr=1e-3, device="cpu", val_patients=["S04"])


def run(dataset, out, **options):
    config = TrainConfig(**{**TINY, **options})
    return train(dataset, out, config, verbose=False)


def metrics(run_dir: Path, drop=("seconds",)) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def assert_last_row_scores_the_saved_model(dataset, run_dir: Path) -> None:
    """The last metrics.csv row is the validation of last.pt's ``model`` (a TINY run, val patient S04)."""
    data = load_dataset(dataset)
    config = TrainConfig(**TINY)
    _, val_idx, _, _ = loop.choose_indices(data, config)
    val = loop.split_tensors(data, val_idx, config, torch.device("cpu"))
    last, _, _ = model_from_checkpoint(run_dir / "last.pt")
    val_loss, val_dice = loop.validate(last, val, build_loss("dice"), Runtime(torch.device("cpu"), "fp32"), 8, 0.5)
    row = metrics(run_dir)[-1]
    assert float(row["val_loss"]) == pytest.approx(val_loss, abs=2e-6)
    assert float(row["val_dice_endo"]) == pytest.approx(val_dice[0], abs=2e-6)


def test_run_folder_has_every_output(tiny_dataset, tmp_path):
    summary = run(tiny_dataset, tmp_path / "run")
    for name in ("config.yaml", "metrics.csv", "progress.png", "last.pt", "best.pt", "summary.json"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = metrics(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "val_dice_endo", "lr"}
    assert summary["n_val"] == 8 and summary["n_train"] == 32 and summary["val_patients"] == ["S04"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data_hash"] == load_dataset(tiny_dataset).meta["content_hash"] and saved["rvseg_version"]


def test_training_learns_the_synthetic_disks(tiny_dataset, tmp_path):
    summary = run(tiny_dataset, tmp_path / "run", width=8, depth=3, epochs=25, lr=3e-3, loss="dice-bce",
                  rotate_deg=20)
    assert summary["best_val_dice"]["endo"] > 0.8


def test_fraction_trains_on_that_share_of_each_patient(tiny_dataset, tmp_path):
    summary = run(tiny_dataset, tmp_path / "run", fraction=0.4, epochs=1)
    # 4 training patients x round(0.4 * 8) slices; validation untouched
    assert summary["n_train"] == 4 * 3 and summary["n_val"] == 8


@pytest.mark.parametrize("scheduler, options, expected", [
    ("step", dict(step_size=2, gamma=0.5), [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]),
    ("none", {}, [1e-3] * 5),
    ("cosine", dict(min_lr=0.0), [1e-3 * (1 + np.cos(np.pi * e / 5)) / 2 for e in range(5)]),
    ("sgdr", dict(sgdr_t0=2, min_lr=0.0), [1e-3, 5e-4, 1e-3, 1e-3 * (1 + np.cos(np.pi / 4)) / 2, 5e-4]),
])
def test_scheduler_shapes_the_lr_curve(tiny_dataset, tmp_path, scheduler, options, expected):
    run(tiny_dataset, tmp_path / "run", scheduler=scheduler, epochs=5, fraction=0.25, **options)
    lrs = [float(r["lr"]) for r in metrics(tmp_path / "run")]
    np.testing.assert_allclose(lrs, expected, rtol=1e-4)


@pytest.mark.parametrize("name, expected", [
    ("sgd", {"momentum": 0.8, "nesterov": True}), ("adamw", {"weight_decay": 0.01}), ("adam", {"weight_decay": 0.0}),
])
def test_optimizer_flags_reach_the_optimizer(tiny_dataset, tmp_path, name, expected):
    run(tiny_dataset, tmp_path / "run", optimizer=name, epochs=1, fraction=0.25,
        momentum=0.8, nesterov=True, weight_decay=expected.get("weight_decay", 0.0))
    group = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"][0]
    for key, value in expected.items():
        assert group[key] == value
    assert ("momentum" in group) == (name == "sgd")


def test_switching_tau_auto_is_the_training_foreground_share(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "run", loss="switching", epochs=1)
    data = load_dataset(tiny_dataset)
    train_rows = data.indices_of_patients(["S00", "S01", "S02", "S03"])
    share = data.masks[train_rows, 0].mean()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["switch_tau"] == "auto"
    assert saved["resolved_tau"] == pytest.approx(share, rel=1e-5)
    # A joint model gets one threshold per target: each structure's own mean share.
    run(tiny_dataset, tmp_path / "joint", loss="switching", epochs=1, target=["endo", "epi"])
    saved = yaml.safe_load((tmp_path / "joint" / "config.yaml").read_text())
    assert saved["resolved_tau"] == pytest.approx([share, data.masks[train_rows, 1].mean()], rel=1e-5)
    assert load_config(tmp_path / "joint" / "config.yaml").resolved_tau == saved["resolved_tau"]


def test_two_targets_give_two_channels_and_two_dice_columns(tiny_dataset, tmp_path, capsys):
    summary = train(tiny_dataset, tmp_path / "run", TrainConfig(**{**TINY, "target": ["endo", "epi"], "epochs": 1}))
    assert {"val_dice_endo", "val_dice_epi"} <= set(metrics(tmp_path / "run")[0])
    # The printed best Dice is the labels' mean with each label named, not an unlabelled mean.
    endo, epi = summary["best_val_dice"]["endo"], summary["best_val_dice"]["epi"]
    assert (f"best val Dice {(endo + epi) / 2:.4f} (endo {endo:.4f}, epi {epi:.4f}) at epoch 1; run folder "
            f"{tmp_path / 'run'}") in capsys.readouterr().out
    model, config, _ = model_from_checkpoint(tmp_path / "run")
    assert model(torch.zeros(1, 1, 48, 40)).shape == (1, 2, 48, 40)


@pytest.mark.parametrize("options, parameters", [
    (dict(arch="unet", width=4, depth=2), None), (dict(arch="dilated-unet", width=4, depth=2), None),
    (dict(arch="unet", width=8, depth=3), None),
])
def test_model_flags_build_that_model(tiny_dataset, tmp_path, options, parameters):
    from rvseg.models import build_model, count_parameters

    run(tiny_dataset, tmp_path / "run", epochs=1, fraction=0.25, **options)
    model, _, _ = model_from_checkpoint(tmp_path / "run")
    expected = build_model(options["arch"], width=options["width"], depth=options["depth"])
    assert count_parameters(model) == count_parameters(expected)


def test_dropout_and_augment_and_seed_change_training(tiny_dataset, tmp_path):
    base = dict(epochs=1, fraction=0.5)
    run(tiny_dataset, tmp_path / "a", **base)
    run(tiny_dataset, tmp_path / "a2", **base)
    run(tiny_dataset, tmp_path / "b", augment=False, **base)
    run(tiny_dataset, tmp_path / "c", seed=1, **base)
    run(tiny_dataset, tmp_path / "d", dropout=0.5, **base)
    first = metrics(tmp_path / "a")
    assert metrics(tmp_path / "a2") == first  # same seed: identical on the CPU
    for other in "bcd":
        assert metrics(tmp_path / other)[0]["train_loss"] != first[0]["train_loss"], other


def test_fold_splits_are_disjoint_and_cover_every_patient(tiny_dataset, tmp_path):
    seen = []
    for fold in range(5):
        # TINY names a validation patient: the fold overrides it, and config.yaml records what was used.
        summary = run(tiny_dataset, tmp_path / f"f{fold}", fold=fold, folds=5, epochs=1, fraction=0.25)
        assert not set(summary["val_patients"]) & set(summary["train_patients"])
        saved = yaml.safe_load((tmp_path / f"f{fold}" / "config.yaml").read_text())
        assert saved["resolved_val_patients"] == summary["val_patients"]
        seen += summary["val_patients"]
    assert sorted(seen) == [f"S{p:02d}" for p in range(5)]


def test_bf16_on_cpu_runs(tiny_dataset, tmp_path):
    summary = run(tiny_dataset, tmp_path / "run", precision="bf16", epochs=1, fraction=0.25)
    assert summary["precision"] == "bf16"


def test_resume_after_pause_equals_one_uninterrupted_run(tiny_dataset, tmp_path):
    # Dropout draws from torch's global generator: last.pt must restore that state too.
    run(tiny_dataset, tmp_path / "once", epochs=4, scheduler="cosine", dropout=0.3)
    run(tiny_dataset, tmp_path / "twice", epochs=4, scheduler="cosine", dropout=0.3, pause_after=2)
    assert len(metrics(tmp_path / "twice")) == 2
    # The pause is the session's: the saved config describes the whole run.
    assert load_config(tmp_path / "twice" / "config.yaml").pause_after is None
    train(tiny_dataset, tmp_path / "twice", TrainConfig(**{**TINY, "epochs": 4, "scheduler": "cosine", "dropout": 0.3}),
          resume=True, verbose=False)
    assert metrics(tmp_path / "twice") == metrics(tmp_path / "once")


def test_a_run_paused_by_an_older_rvseg_that_drew_or_resolved_otherwise_is_not_resumed(tiny_dataset, tmp_path):
    """Older versions pooled the switching threshold of a joint model and drew --fraction otherwise:
    continuing such a run would silently change its loss or its slices half-way."""
    from rvseg.train.checkpoint import save_checkpoint

    options = {**TINY, "epochs": 2, "loss": "switching", "target": ["endo", "epi"], "fraction": 0.5}
    train(tiny_dataset, tmp_path / "run", TrainConfig(**options, pause_after=1), verbose=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    per_target = state["config"]["resolved_tau"]
    state["config"]["resolved_tau"] = 0.07  # one pooled threshold
    state["data"]["train_slices"] = "0123456789abcdef"
    save_checkpoint(tmp_path / "run" / "last.pt", state)
    with pytest.raises(ConfigError, match=r"training slices \(the split and the --fraction draw\), as an older "
                                          r"rvseg made them; the resolved switching threshold \(0.07 -> \[.*\]\), as"):
        train(tiny_dataset, tmp_path / "run", TrainConfig(**options), resume=True, verbose=False)
    with pytest.raises(ConfigError, match=r"--seed \(0 -> 3\); the training slices \(the split and the --fraction "
                                          r"draw\); the res"):
        train(tiny_dataset, tmp_path / "run", TrainConfig(**options, seed=3), resume=True, verbose=False)
    del state["data"]["train_slices"]  # written before the slices were recorded: cannot be the same ones
    state["config"]["resolved_tau"] = per_target
    save_checkpoint(tmp_path / "run" / "last.pt", state)
    with pytest.raises(ConfigError, match="which last.pt does not record"):
        train(tiny_dataset, tmp_path / "run", TrainConfig(**options), resume=True, verbose=False)


def test_a_numeric_switch_tau_set_in_python_resumes_from_the_command_line_text(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "run", epochs=2, loss="switching", switch_tau=0.03, pause_after=1)
    train(tiny_dataset, tmp_path / "run", TrainConfig(**{**TINY, "epochs": 2, "loss": "switching",
                                                         "switch_tau": "0.03"}), resume=True, verbose=False)
    assert len(metrics(tmp_path / "run")) == 2


def test_ema_validates_and_saves_the_moving_average(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "plain", epochs=3)
    run(tiny_dataset, tmp_path / "ema", epochs=3, ema=0.9)
    rows, plain = metrics(tmp_path / "ema"), metrics(tmp_path / "plain")
    assert [r["val_dice_endo"] for r in rows] != [r["val_dice_endo"] for r in plain]
    # The average does not change training: the trained weights score as in the plain run.
    assert [r["trained_val_dice_endo"] for r in rows] == [r["val_dice_endo"] for r in plain]
    state = load_checkpoint(tmp_path / "ema" / "last.pt")
    assert state["ema_updates"] == 3 * 4  # 32 training slices in batches of 8
    assert not torch.equal(state["model"]["encoders.0.0.weight"],
                           state["training_model"]["encoders.0.0.weight"])
    assert_last_row_scores_the_saved_model(tiny_dataset, tmp_path / "ema")  # "model" is the average


def test_resume_with_ema_equals_one_uninterrupted_run(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "once", epochs=4, ema=0.8)
    run(tiny_dataset, tmp_path / "twice", epochs=4, ema=0.8, pause_after=2)
    train(tiny_dataset, tmp_path / "twice", TrainConfig(**{**TINY, "epochs": 4, "ema": 0.8}), resume=True,
          verbose=False)
    assert metrics(tmp_path / "twice") == metrics(tmp_path / "once")


def test_deep_supervision_trains_the_heads_and_the_checkpoint_predicts_plainly(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "plain", epochs=2)
    run(tiny_dataset, tmp_path / "deep", epochs=2, deep_supervision=1)
    # same initial main weights (the head is built last) and batches: the head's loss changes training
    assert metrics(tmp_path / "deep") != metrics(tmp_path / "plain")
    model, config, _ = model_from_checkpoint(tmp_path / "deep" / "last.pt")
    assert config["deep_supervision"] == 1 and len(model.aux_heads) == 1
    assert not model.training and model(torch.zeros(1, 1, 20, 16)).shape == (1, 1, 20, 16)
    assert_last_row_scores_the_saved_model(tiny_dataset, tmp_path / "deep")
    run(tiny_dataset, tmp_path / "paused", epochs=2, deep_supervision=1, pause_after=1)
    train(tiny_dataset, tmp_path / "paused", TrainConfig(**{**TINY, "deep_supervision": 1}), resume=True,
          verbose=False)
    assert metrics(tmp_path / "paused") == metrics(tmp_path / "deep")


def test_resume_refuses_other_options_or_data_with_one_line(tiny_dataset, tmp_path, capsys):
    run(tiny_dataset, tmp_path / "run", epochs=1, fraction=0.25)
    resume = ["train", str(tiny_dataset), "--out", str(tmp_path / "run"), "--resume", "--epochs", "2", "--quiet"]
    assert main([*resume, "--width", "8"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume the run in last.pt, which differs in: --width (4 -> 8)." in err and "Traceback" not in err
    other = tmp_path / "other-data"
    write_prepared(synthetic_report(seed=1), other, PrepareOptions(normalize="none"))
    resume[1] = str(other)
    assert main(resume) == 2
    assert "which differs in: the data set" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1  # untouched


def test_existing_run_needs_resume(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "run", epochs=1, fraction=0.25)
    with pytest.raises(ConfigError, match="--resume"):
        run(tiny_dataset, tmp_path / "run", epochs=1, fraction=0.25)
    # A finished sweep run keeps best.pt but not last.pt: it is neither overwritten nor restarted.
    (tmp_path / "run" / "last.pt").unlink()
    before = {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir()}
    with pytest.raises(ConfigError, match="--resume"):
        run(tiny_dataset, tmp_path / "run", epochs=1, fraction=0.25)
    with pytest.raises(ConfigError, match="finished and its last.pt was removed"):
        train(tiny_dataset, tmp_path / "run", TrainConfig(**{**TINY, "epochs": 3, "fraction": 0.25}), resume=True,
              verbose=False)
    assert {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir()} == before


def test_resuming_a_finished_run_keeps_its_time_and_refuses_fewer_epochs(tiny_dataset, tmp_path):
    first = run(tiny_dataset, tmp_path / "run", epochs=2, fraction=0.25)
    again = train(tiny_dataset, tmp_path / "run", TrainConfig(**{**TINY, "fraction": 0.25}), resume=True,
                  verbose=False)
    # Kept, not 0 (a resumed session adds only its own set-up time, whatever the machine's load).
    assert 0 < first["seconds"] <= again["seconds"] + 0.01 < first["seconds"] + 30
    assert again["final"] == first["final"] and again["final"]["epoch"] == 2
    assert isinstance(again["final"]["val_loss"], float)
    with pytest.raises(ConfigError, match="--epochs 1 is below the 2 epochs"):
        train(tiny_dataset, tmp_path / "run", TrainConfig(**{**TINY, "epochs": 1, "fraction": 0.25}), resume=True,
              verbose=False)
    longer = train(tiny_dataset, tmp_path / "run", TrainConfig(**{**TINY, "epochs": 3, "fraction": 0.25}),
                   resume=True, verbose=False)
    rows = metrics(tmp_path / "run", drop=())
    # The new epoch's time is added to the run's, not counted alone (set-up and saving come on top).
    added = again["seconds"] + float(rows[-1]["seconds"])
    assert added <= longer["seconds"] + 0.01 < added + 30


def test_a_longer_resumed_cosine_run_follows_the_cosine_of_its_new_length(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "run", epochs=2, scheduler="cosine", lr=0.01, min_lr=0.0)
    train(tiny_dataset, tmp_path / "run", TrainConfig(**{**TINY, "epochs": 6, "scheduler": "cosine", "lr": 0.01,
                                                         "min_lr": 0.0}), resume=True, verbose=False)
    lrs = [float(row["lr"]) for row in metrics(tmp_path / "run")]
    cosine = [0.01 * (1 + math.cos(math.pi * epoch / 6)) / 2 for epoch in range(6)]
    assert lrs[:2] == pytest.approx([0.01, 0.005], rel=1e-4)  # the first two epochs of a 2-epoch cosine
    assert lrs[2:] == pytest.approx(cosine[2:], rel=1e-4)
    assert (np.diff(lrs[2:]) < 0).all()  # falls, never climbs back


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    real_build_loss = loop.build_loss

    def build_loss_going_nan(name, **params):
        loss_fn, calls = real_build_loss(name, **params), {"n": 0}

        def wrapped(logits, target):
            calls["n"] += 1
            value = loss_fn(logits, target)
            return value * float("nan") if calls["n"] > 6 else value  # 4 train + 1 val steps per epoch

        return wrapped

    monkeypatch.setattr(loop, "build_loss", build_loss_going_nan)
    with pytest.raises(TrainingDiverged, match="epoch 2.*best.pt and last.pt .from before. kept"):
        run(tiny_dataset, tmp_path / "run", epochs=3)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_stop_signal_after_the_loss_went_nan_keeps_the_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    real_build_loss = loop.build_loss

    def build_loss_going_nan_then_signalled(name, **params):
        loss_fn, calls = real_build_loss(name, **params), {"n": 0}

        def wrapped(logits, target):
            calls["n"] += 1  # 4 train + 1 val calls per epoch
            if calls["n"] == 8:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in epoch 2, after its weights went NaN
            value = loss_fn(logits, target)
            return value * float("nan") if calls["n"] > 6 else value

        return wrapped

    monkeypatch.setattr(loop, "build_loss", build_loss_going_nan_then_signalled)
    with pytest.raises(TrainingDiverged, match="training loss became nan in epoch 2"):
        run(tiny_dataset, tmp_path / "run", epochs=3)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def scripted_validation(results):
    """A stand-in for loop.validate returning ``(val_loss, [val_dice])`` pairs in turn."""
    results = iter(results)
    return lambda *args, **kwargs: next(results)


def test_divergence_keeps_the_best_weights_not_yet_written(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "CHECKPOINT_OVERHEAD", 1e-12)  # only epoch 1 writes a checkpoint
    monkeypatch.setattr(loop, "validate", scripted_validation([(0.5, [0.2]), (0.4, [0.6]), (float("nan"), [0.0])]))
    with pytest.raises(TrainingDiverged, match="validation loss became nan in epoch 3"):
        run(tiny_dataset, tmp_path / "run", epochs=5, fraction=0.25)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert (best["epoch"], best["dice"]) == (2, [0.6])


def test_a_crash_between_checkpoint_files_never_leaves_best_pt_behind(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "CHECKPOINT_OVERHEAD", float("inf"))  # a checkpoint after every epoch
    monkeypatch.setattr(loop, "validate", scripted_validation([(0.5, [0.2]), (0.4, [0.6]), (0.3, [0.7])]))
    real_save, writes = loop.save_checkpoint, []

    def save_then_crash(path, state):
        writes.append(Path(path).name)
        if len(writes) == 4:  # the second file of epoch 2's checkpoint (epoch 2 improved: two files)
            raise RuntimeError("killed")
        real_save(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        run(tiny_dataset, tmp_path / "run", epochs=3, fraction=0.25)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    # A resumed run trusts last.pt's record of the best epoch: best.pt must hold that epoch or a later one.
    assert best["epoch"] >= last["best"]["epoch"]


def test_yaml_config_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss: focal\nepochs: 7\nval-patients: [P13, P14]\nlr: 0.01\n")
    config = load_config(path, {"lr": "0.002"})
    assert (config.loss, config.epochs, config.val_patients, config.lr) == ("focal", 7, ["P13", "P14"], 0.002)
    path.write_text("nonsense: 1\n")
    with pytest.raises(ConfigError, match="nonsense"):
        load_config(path)
    path.write_text("epochs: 2.5\n")
    with pytest.raises(ConfigError, match="epochs: 2.5 is not a valid int"):
        load_config(path)


@pytest.mark.parametrize("name, difference", [
    ("rvsc-endo", {}), ("rvsc-epi", {"target": ["epi"]}), ("rvsc-joint", {"target": ["endo", "epi"]}),
    ("rvsc-endo-ds", {"deep_supervision": 2}),
    ("rvsc-joint-lambda25", {"target": ["endo", "epi"], "switch_lambda": 0.25, "snapshots": True}),
])
def test_the_committed_recipes_load_and_differ_only_as_named(name, difference):
    config = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    endo = load_config(Path(__file__).parents[1] / "configs" / "rvsc-endo.yaml")
    assert config.to_dict() == {**endo.to_dict(), **difference}
    assert endo.target == ["endo"] and endo.val_patients == ["P13", "P14", "P15", "P16"]
    assert (endo.width, endo.loss, endo.scheduler, endo.epochs, endo.ema) == (64, "switching", "sgdr", 350, 0.99)


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, not 0"),
    (["--epochs", "0"], "--epochs must be at least 1, not 0"),
    (["--lr", "-1"], "--lr must be a finite number greater than 0, not -1.0"),
    (["--lr", "inf"], "--lr must be a finite number greater than 0, not inf"),
    (["--scheduler", "step", "--step-size", "0"], "--step-size must be at least 1, not 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a finite number of at least 0, not -0.1"),
    (["--depth", "0"], "--depth must be at least 1, not 0"),
    (["--optimizer", "sgd", "--momentum", "5"], "--momentum must be in [0, 1), not 5.0"),
    (["--target", "endo,endo"], "--target names endo more than once"),
    (["--intensity", "1.5"], "--intensity must be in [0, 1), not 1.5"),
    (["--scale-min", "1.2"], "--scale-max must be a finite number of at least --scale-min (1.2), not 1.15"),
    (["--rotate-deg", "-5"], "--rotate-deg must be a finite number of at least 0, not -5.0"),
])
def test_out_of_range_options_are_one_line_errors(tiny_dataset, tmp_path, capsys, flags, message):
    assert main(["train", str(tiny_dataset), "--out", str(tmp_path / "r"), "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_augmentation_ranges_of_a_run_without_augmentation_are_not_checked():
    """An older config.yaml with augment: false and unused ranges still loads (and resumes)."""
    TrainConfig(augment=False, scale_min=0.0, scale_max=0.0, intensity=2.0).validate()
    with pytest.raises(ConfigError, match="--intensity must be in"):
        TrainConfig(intensity=2.0).validate()


def test_an_sgdr_run_that_stops_inside_a_cycle_is_noted():
    from rvseg.train.optim import sgdr_mid_cycle_note

    note = sgdr_mid_cycle_note(TrainConfig(scheduler="sgdr"))  # 100 epochs of cycles 50, 100
    assert "cycles end after 50, 150 epochs, so 100 epochs stop inside a cycle" in note
    assert "--epochs 50 or 150 would end" in note
    assert sgdr_mid_cycle_note(TrainConfig(scheduler="sgdr", epochs=350)) is None  # the configs/ recipes
    assert sgdr_mid_cycle_note(TrainConfig(scheduler="cosine", epochs=37)) is None


def test_sgdr_cycles_end_after_t0_3t0_7t0():
    from rvseg.train.optim import is_sgdr_cycle_end, sgdr_cycle_ends

    assert sgdr_cycle_ends(50, 750) == [50, 150, 350, 750]
    assert sgdr_cycle_ends(50, 400) == [50, 150, 350, 750]  # up to the first end at or after the run's
    assert [epoch for epoch in range(1, 16) if is_sgdr_cycle_end(1, epoch)] == [1, 3, 7, 15]


def test_snapshots_keep_the_weights_of_each_sgdr_cycles_end_and_survive_a_pause(tiny_dataset, tmp_path):
    options = dict(scheduler="sgdr", sgdr_t0=1, epochs=4, ema=0.8, snapshots=True)  # cycles end after 1, 3, 7
    run(tiny_dataset, tmp_path / "run", **options, pause_after=2)
    summary = train(tiny_dataset, tmp_path / "run", TrainConfig(**{**TINY, **options}), resume=True, verbose=False)
    assert summary["snapshots"] == ["snapshot-0001.pt", "snapshot-0003.pt"]
    rows = metrics(tmp_path / "run")
    lrs = [float(row["lr"]) for row in rows]
    assert lrs[0] == lrs[1] and lrs[2] < lrs[1] and lrs[3] == lrs[0]  # epoch 3 is cycle 2's low, 4 restarts
    for epoch in (1, 3):
        state = load_checkpoint(tmp_path / "run" / f"snapshot-{epoch:04d}.pt")
        assert state["epoch"] == epoch and state["data"]["val_patients"] == ["S04"]
        assert state["dice"][0] == pytest.approx(float(rows[epoch - 1]["val_dice_endo"]), abs=1e-6)
    # A snapshot is the validated (averaged) weights, and loads as any checkpoint does.
    model, config, _ = model_from_checkpoint(tmp_path / "run" / "snapshot-0003.pt")
    assert config["snapshots"] is True and config["ema"] == 0.8
    data = load_dataset(tiny_dataset)
    _, val_idx, _, _ = loop.choose_indices(data, TrainConfig(**TINY))
    val = loop.split_tensors(data, val_idx, TrainConfig(**TINY), torch.device("cpu"))
    _, dice = loop.validate(model, val, build_loss("dice"), Runtime(torch.device("cpu"), "fp32"), 8, 0.5)
    assert dice[0] == pytest.approx(float(rows[2]["val_dice_endo"]), abs=2e-6)


def test_snapshots_need_sgdr_and_may_be_switched_on_when_resuming(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="--snapshots needs --scheduler sgdr"):
        TrainConfig(snapshots=True, scheduler="cosine").validate()
    run(tiny_dataset, tmp_path / "run", scheduler="sgdr", sgdr_t0=1, epochs=3, pause_after=1)
    assert main(["train", str(tiny_dataset), "--out", str(tmp_path / "run"), "--resume", "--snapshots", "--quiet"]) == 0
    # Switched on after epoch 1: the cycle that ended there left no snapshot.
    assert sorted(path.name for path in (tmp_path / "run").glob("snapshot-*")) == ["snapshot-0003.pt"]
    # The summary lists the run's own cycle ends, whatever the last session's flag: not a file beyond its end.
    (tmp_path / "run" / "snapshot-0007.pt").write_bytes(b"")
    config = load_config(tmp_path / "run" / "config.yaml")
    assert loop.kept_snapshots(tmp_path / "run", replace(config, snapshots=False)) == ["snapshot-0003.pt"]
    assert yaml.safe_load((tmp_path / "run" / "summary.json").read_text())["snapshots"] == ["snapshot-0003.pt"]


def test_folds_alone_train_every_fold_into_fold_folders_and_resume_as_one(tiny_dataset, tmp_path, capsys):
    from rvseg.evaluate import evaluate
    from rvseg.inference import Predictor
    from rvseg.train.folds import train_folds

    cv = tmp_path / "cv"
    command = ["train", str(tiny_dataset), "--out", str(cv), "--folds", "2", "--width", "4", "--depth", "2",
               "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet"]
    assert main(command) == 0
    runs = [cv / "fold_0", cv / "fold_1"]
    configs = [load_config(run / "config.yaml") for run in runs]
    assert [(c.fold, c.folds) for c in configs] == [(0, 2), (1, 2)]
    validated = [set(c.resolved_val_patients) for c in configs]
    assert validated[0].isdisjoint(validated[1]) and validated[0] | validated[1] == {f"S0{k}" for k in range(5)}
    summary = yaml.safe_load((cv / "folds.json").read_text())
    assert [fold["run"] for fold in summary["folds"]] == ["fold_0", "fold_1"]
    best = [fold["best_val_dice"]["endo"] for fold in summary["folds"]]
    assert summary["mean_best_val_dice"]["endo"] == pytest.approx(sum(best) / 2)
    # Again into the same folder: refused before anything trains; --resume continues every fold, longer here.
    capsys.readouterr()
    assert main(command) == 2 and "fold_0: fold folder already holds a run" in capsys.readouterr().err
    assert main(["train", str(tiny_dataset), "--out", str(cv), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert [len(metrics(run)) for run in runs] == [2, 2]
    # The folder stands for its folds: a cross-validation to evaluate, an ensemble to predict with.
    scored = evaluate(cv, tiny_dataset, cv=True, device="cpu")
    assert [fold["checkpoints"] for fold in scored["folds"]] == [[str(run / "best.pt")] for run in runs]
    assert Predictor.from_checkpoints(cv, device="cpu").checkpoints == [run / "best.pt" for run in runs]
    with pytest.raises(ConfigError, match="use --cv if they are the folds"):
        evaluate(cv, tiny_dataset, device="cpu")
    with pytest.raises(ConfigError, match="every fold needs --folds N without --fold"):
        train_folds(tiny_dataset, cv, TrainConfig(**TINY))
    with pytest.raises(ConfigError, match="--folds without --fold trains every fold"):
        train(tiny_dataset, tmp_path / "one", TrainConfig(**{**TINY, "val_patients": [], "folds": 2}))


def test_folds_pause_resume_and_refuse_what_is_no_cross_validation(tiny_dataset, tmp_path, monkeypatch):
    from rvseg.inference import Predictor
    from rvseg.train.folds import fold_runs, train_folds

    cv, options = tmp_path / "cv", {**TINY, "val_patients": [], "folds": 2, "epochs": 2}
    paused = train_folds(tiny_dataset, cv, TrainConfig(**options, pause_after=1), verbose=False)
    assert paused == {"paused_at_fold": 0, "paused_at_epoch": 1} and not (cv / "folds.json").exists()
    # A cross-validation still training is no ensemble yet: it is named, not used.
    with pytest.raises(DataError, match=r"cross-validation is not finished \(fold_1 missing\)"):
        Predictor.from_checkpoints(cv, device="cpu")
    # Resumed with the pause again: fold 0 ends, fold 1 pauses at its first epoch.
    resume = ["train", str(tiny_dataset), "--out", str(cv), "--resume", "--quiet"]
    assert main([*resume, "--pause-after", "1"]) == 0
    assert [len(metrics(run)) for run in fold_runs(cv)] == [2, 1] and not (cv / "folds.json").exists()
    with pytest.raises(DataError, match=r"not finished \(fold_1 not trained to its last epoch\)"):
        Predictor.from_checkpoints(cv, device="cpu")
    # fold_0's folder lost: resumed with the options fold_1 saved, every fold.
    shutil.rmtree(cv / "fold_0")
    assert main(resume) == 0
    assert [run.name for run in fold_runs(cv)] == ["fold_0", "fold_1"] and (cv / "folds.json").is_file()
    assert [len(metrics(run)) for run in fold_runs(cv)] == [2, 2]
    # Lengthened and paused: the folds' old summaries no longer stand for them.
    assert main([*resume, "--epochs", "4", "--pause-after", "3"]) == 0
    assert not (cv / "folds.json").exists() and (cv / "fold_0" / "summary.json").exists()
    with pytest.raises(DataError, match=r"not finished \(fold_0 not trained to its last epoch\)"):
        Predictor.from_checkpoints(cv, device="cpu")
    assert main([*resume, "--epochs", "4"]) == 0
    assert [len(metrics(run)) for run in fold_runs(cv)] == [4, 4]
    assert len(Predictor.from_checkpoints(cv, device="cpu").checkpoints) == 2
    # A finished fold is taken as it is, even without its last.pt (as a sweep keeps it); other options are
    # refused before any fold trains.
    (cv / "fold_0" / "last.pt").unlink()
    longer = TrainConfig(**{**options, "epochs": 4})
    assert train_folds(tiny_dataset, cv, longer, resume=True, verbose=False)["folds"][0]["best_epoch"] >= 1
    with pytest.raises(ConfigError, match=r"fold_0 was trained with other options: --width \(4 -> 8\)"):
        train_folds(tiny_dataset, cv, replace(longer, width=8), resume=True, verbose=False)
    # Only fold_K names with a plain number are folds; a fold beyond the count, or of another count, is named.
    for name in ("fold_01", "fold_x", "fold_"):
        (cv / name).mkdir()
    assert [run.name for run in fold_runs(cv)] == ["fold_0", "fold_1"]
    shutil.copytree(cv / "fold_1", cv / "fold_2")
    with pytest.raises(DataError, match="fold_2 lies beyond the cross-validation's 2 folds"):
        Predictor.from_checkpoints(cv, device="cpu")
    saved = cv / "fold_2" / "config.yaml"
    saved.write_text(saved.read_text().replace("folds: 2", "folds: 3"))
    with pytest.raises(DataError, match="trained as different cross-validations"):
        Predictor.from_checkpoints(cv, device="cpu")
    # A single run is not trained into a cross-validation's folder, nor every fold into a single run's.
    with pytest.raises(ConfigError, match="folder holds the folds of a cross-validation"):
        train(tiny_dataset, cv, TrainConfig(**{**options, "fold": 0}))
    run(tiny_dataset, tmp_path / "single", epochs=1)
    with pytest.raises(ConfigError, match="folder holds a single run, not the folds"):
        train_folds(tiny_dataset, tmp_path / "single", TrainConfig(**options))
    # Invalid options before anything trains.
    for folds, message in (("two", "folds must be"), (1, "--folds must be at least 2, not 1")):
        with pytest.raises(ConfigError, match=message):
            train_folds(tiny_dataset, tmp_path / "bad", TrainConfig(**{**options, "folds": folds}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="under torchrun, train one fold per launch"):
        train_folds(tiny_dataset, tmp_path / "ddp", TrainConfig(**options))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "ddp").exists()


def test_a_usage_error_is_one_line_pointing_at_the_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "data", "--out", "run", "--epochs"])
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines() == [
        "rvseg train: error: argument --epochs: expected one argument (options: rvseg train --help)"]


def test_every_switch_can_be_turned_off_from_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--augment, --no-augment" in capsys.readouterr().out
    args = parse_arguments(["train", "data", "--out", "run", "--train-share", "0.4"])
    assert overrides_from_args(args)["fraction"] == "0.4"


def test_every_argument_of_every_command_says_what_it_is_in_help():
    from rvseg.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    undocumented = [f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
                    for name, command in commands.items() for action in command._actions if not action.help]
    assert undocumented == []


def test_cli_reports_bad_options_without_traceback(tiny_dataset, tmp_path, capsys):
    code = main(["train", str(tiny_dataset), "--out", str(tmp_path / "r"), "--loss", "wrong", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown loss 'wrong'" in err and "Traceback" not in err
    code = main(["train", str(tiny_dataset), "--out", str(tmp_path / "r"), "--epochs", "many"])
    assert code == 2 and "not a valid int" in capsys.readouterr().err


def cli_command(dataset, out, *extra):
    flags = ["--width", "4", "--depth", "2", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu",
             "--val-patients", "S04"]
    return [sys.executable, "-m", "rvseg", "train", str(dataset), "--out", str(out), *flags, *extra]


def test_sigint_saves_mid_epoch_and_resume_continues_exactly(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "once", epochs=3, batch_size=2)
    process = subprocess.Popen(cli_command(tiny_dataset, tmp_path / "cut", "--epochs", "3", "--batch-size", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith("epoch 1/3"):
            process.send_signal(signal.SIGINT)
            break
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 130, output
    assert "interrupted: saved" in output
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert state["epoch"] >= 1 and 0 < state["step"] < 16  # mid-epoch: 32 slices / batch 2
    resume = cli_command(tiny_dataset, tmp_path / "cut", "--epochs", "3", "--batch-size", "2", "--resume", "--quiet")
    subprocess.run(resume, check=True, timeout=120)
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "once")


def torchrun_command(dataset, out, *extra, port_offset: int = 0) -> list[str]:
    """``cli_command`` run as 2 CPU ranks by torchrun (a port of its own per offset)."""
    port = 29500 + (os.getpid() + 97 * port_offset) % 1000
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(port)]
    return torchrun + cli_command(dataset, out, *extra)[1:]


def test_a_torchrun_rank_exits_with_its_code_and_its_output(tmp_path):
    """A rank ends with os._exit (no interpreter shutdown, where gloo's threads abort it): the exit code
    and the buffered output must still get out."""
    env = {**os.environ, "WORLD_SIZE": "2"}
    result = subprocess.run([sys.executable, "-m", "rvseg", "inspect", str(tmp_path / "missing")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("rvseg: ") and "missing" in result.stderr


def test_two_rank_ddp_on_cpu_writes_one_consistent_run(tiny_dataset, tmp_path):
    command = torchrun_command(tiny_dataset, tmp_path / "ddp", "--epochs", "2", "--quiet")
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-6000:]  # the launcher's traceback alone fills 2,000
    rows = metrics(tmp_path / "ddp")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["epoch"] == 2 and len(state["augment_generators"]) == 2
    summary = yaml.safe_load((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_train"] == 32
    model, _, _ = model_from_checkpoint(tmp_path / "ddp")
    assert not any(k.startswith("module.") for k in model.state_dict())
    # Rank 0's BatchNorm statistics on every rank: the ranks validated the model that was saved.
    assert_last_row_scores_the_saved_model(tiny_dataset, tmp_path / "ddp")


def test_two_ranks_interrupted_mid_epoch_resume_exactly(tiny_dataset, tmp_path):
    flags = ("--epochs", "3", "--batch-size", "2")  # 16 slices per rank: 8 steps per epoch
    once = subprocess.run(torchrun_command(tiny_dataset, tmp_path / "once", *flags, "--quiet", port_offset=1),
                          capture_output=True, text=True, timeout=300)
    assert once.returncode == 0, once.stderr[-6000:]
    process = subprocess.Popen(torchrun_command(tiny_dataset, tmp_path / "cut", *flags, port_offset=2),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in process.stdout:
        if line.startswith("epoch 1/3"):
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the launcher and both ranks
            break
    output = process.communicate(timeout=120)[0]
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert state["epoch"] >= 1 and 0 < state["step"] < 8, output[-2000:]
    resumed = subprocess.run(torchrun_command(tiny_dataset, tmp_path / "cut", *flags, "--resume", "--quiet",
                                              port_offset=3), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "once")


def test_augmentation_and_batch_flags_reach_the_augmenter(tiny_dataset, tmp_path, monkeypatch):
    seen = []

    def recording_augment(images, targets, config, generator):
        seen.append((len(images), config))
        return images, targets

    monkeypatch.setattr(loop, "augment_batch", recording_augment)
    run(tiny_dataset, tmp_path / "run", epochs=1, batch_size=5, rotate_deg=15.0, scale_min=0.9, scale_max=1.2,
        translate=0.02, intensity=0.2, elastic=3.0)
    assert [n for n, _ in seen] == [5] * 6 + [2]  # 32 slices in batches of 5
    config = seen[0][1]
    assert (config.rotate_deg, config.scale, config.translate, config.intensity, config.elastic) == \
        (15.0, (0.9, 1.2), 0.02, 0.2, 3.0)
    seen.clear()
    run(tiny_dataset, tmp_path / "off", epochs=1, augment=False)
    assert seen == []


def test_loss_flags_reach_the_loss(tiny_dataset, tmp_path, monkeypatch):
    seen = {}
    real_build_loss = loop.build_loss

    def recording_build_loss(name, **params):
        seen.update(name=name, **params)
        return real_build_loss(name, **params)

    monkeypatch.setattr(loop, "build_loss", recording_build_loss)
    run(tiny_dataset, tmp_path / "f", epochs=1, fraction=0.25, loss="focal", focal_alpha=0.5, focal_gamma=1.0)
    assert (seen["name"], seen["focal_alpha"], seen["focal_gamma"]) == ("focal", 0.5, 1.0)
    run(tiny_dataset, tmp_path / "s", epochs=1, fraction=0.25, loss="switching", switch_lambda=0.25,
        switch_tau="0.03", switch_per="batch")
    assert (seen["switch_lambda"], seen["switch_tau"], seen["switch_per"]) == (0.25, 0.03, "batch")


def test_compile_flag_compiles_the_training_model(tiny_dataset, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    run(tiny_dataset, tmp_path / "run", epochs=1, fraction=0.25, compile=True)
    assert len(compiled) == 1


def test_oversampling_draws_small_foreground_slices_more_often():
    hard = torch.zeros(100, 1, 10, 10, dtype=torch.bool)
    hard[:50, :, :5, :5] = True  # 25% foreground
    hard[50:, :, 0, :2] = True  # 2% foreground
    data = loop.SplitData(hard.float(), hard.float(), hard, ["P"] * 100)

    def share_of_small(**options) -> float:
        order = loop.epoch_order(data, TrainConfig(**options), torch.Generator().manual_seed(0))
        assert len(order) == 100
        return float((order >= 50).float().mean())

    assert share_of_small(oversample_small=4.0, small_foreground=0.05) > 0.7  # expected 4/5
    assert 0.3 < share_of_small(oversample_small=4.0) < 0.7  # 2% is not small at the default 1%
    uniform = loop.epoch_order(data, TrainConfig(), torch.Generator().manual_seed(0))
    assert sorted(uniform.tolist()) == list(range(100))
    # Outline targets: the share of the region the outline encloses decides, not the 1-px stroke's.
    masks = torch.zeros(100, 1, 20, 20)
    masks[:50, :, 2:18, 2:18] = 1  # 64 %, an outline of 15 %: not small at 20 %, its outline would be
    masks[50:, :, 5:8, 5:8] = 1  # 2 %, an outline of 2 %
    outlines = encode_targets(masks, "outline")
    outlined = loop.SplitData(masks, outlines, outlines > 0.5, ["P"] * 100, masks=masks, style="outline")
    order = loop.epoch_order(outlined, TrainConfig(oversample_small=4.0, small_foreground=0.2),
                             torch.Generator().manual_seed(0))
    assert float((order >= 50).float().mean()) > 0.7
    with pytest.raises(ConfigError, match="--small-foreground must be in"):
        TrainConfig(oversample_small=2.0, small_foreground=1.5).validate()
    with pytest.raises(ConfigError, match=r"--deep-supervision must be in \[0, 2\) \(below --depth\)"):
        TrainConfig(depth=2, deep_supervision=2).validate()


def test_device_and_precision_flags(tiny_dataset, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            run(tiny_dataset, tmp_path / "c", device="cuda")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        run(tiny_dataset, tmp_path / "h", precision="fp16")


def test_default_split_uses_split_seed_and_val_fraction(tiny_dataset, tmp_path):
    a = run(tiny_dataset, tmp_path / "a", val_patients=[], epochs=1, fraction=0.25, split_seed=1)
    b = run(tiny_dataset, tmp_path / "b", val_patients=[], epochs=1, fraction=0.25, split_seed=2)
    c = run(tiny_dataset, tmp_path / "c", val_patients=[], epochs=1, fraction=0.25, val_fraction=0.4)
    assert len(a["val_patients"]) == 1 and len(c["val_patients"]) == 2
    assert a["val_patients"] != b["val_patients"]


def test_switching_tau_auto_follows_the_foreground_share_on_grey_targets():
    masks = torch.zeros(4, 1, 10, 10)
    for i, side in enumerate((1, 2, 5, 8)):
        masks[i, 0, :side, :side] = 1  # foreground shares 0.01, 0.04, 0.25, 0.64
    targets = encode_targets(masks, "grey")  # 0.5 background, 1 foreground
    split = loop.SplitData(masks, targets, targets > decision_threshold("grey"), ["P"] * 4)
    tau = loop.resolve_tau(TrainConfig(loss="switching"), split)
    share = masks.mean(dim=(1, 2, 3))
    # The loss compares each target's mean with tau: the large-foreground branch for the two large slices only.
    assert ((targets.mean(dim=(1, 2, 3)) > tau) == (share > share.mean())).tolist() == [True] * 4
    assert tau == pytest.approx(0.5 + 0.5 * float(share.mean()))


def test_a_depth_that_halves_the_images_below_a_pixel_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match="--depth 7 halves the 48 x 40 images 7 times, below one pixel; at most "
                                          "--depth 5 fits them"):
        run(tiny_dataset, tmp_path / "run", depth=7)
    assert not (tmp_path / "run").exists()


def test_slices_carrying_only_some_targets_are_named_in_a_note(tmp_path):
    """Sunnybrook has i-contours on more images than o-contours: a model of both leaves the others
    out, which the user must be told (evaluate scores each label on every slice that has it)."""
    report = synthetic_report()
    for sample in report.samples[::4]:
        del sample.masks["epi"]
    write_prepared(report, tmp_path / "data", PrepareOptions(normalize="none"))
    data = load_dataset(tmp_path / "data")
    both = TrainConfig(**{**TINY, "target": ["endo", "epi"]})
    train_idx, val_idx, train_patients, val_patients = loop.choose_indices(data, both)
    assert len(train_idx) + len(val_idx) == 30  # 10 of the 40 slices lack epi
    assert loop.partly_labelled_note(data, both, [*train_patients, *val_patients]).startswith(
        "note: 10 slice(s) carry only some of endo, epi and are left out")
    assert loop.partly_labelled_note(data, TrainConfig(**TINY), [*train_patients, *val_patients]) is None


def test_validation_dice_of_an_outline_model_scores_the_regions_it_encloses():
    """As rvseg evaluate does: an outline predicted one pixel off encloses nearly the same region
    (Dice ~0.93) although the one-pixel strokes hardly overlap (Dice ~0.2)."""
    from skimage.draw import ellipse

    masks = torch.zeros(2, 1, 48, 40)
    masks[:, 0][(slice(None), *ellipse(24, 20, 12, 8, shape=(48, 40)))] = 1
    targets = encode_targets(masks, "outline")
    val = loop.SplitData(torch.zeros(2, 1, 48, 40), targets, targets > 0.5, ["P"] * 2, masks=masks, style="outline")

    class OneOff(torch.nn.Module):  # predicts the target outline shifted one pixel to the right
        def forward(self, images):
            return torch.roll(targets, 1, dims=-1) * 20 - 10

    _, (dice,) = loop.validate(OneOff(), val, build_loss("dice"), Runtime(torch.device("cpu"), "fp32"), 2, 0.5)
    shifted = torch.roll(masks, 1, dims=-1)
    region_dice = float(2 * (shifted * masks).sum() / (shifted.sum() + masks.sum()))
    assert dice == pytest.approx(region_dice, abs=1e-6) and dice > 0.9


@pytest.mark.parametrize("style", ["grey", "outline"])
def test_augmented_targets_are_the_encoding_of_the_warped_masks(style):
    from rvseg.train.augment import AugmentConfig, augment_batch, to_device_generator

    masks = torch.zeros(6, 1, 32, 28)
    masks[:, 0, 8:24, 6:20] = 1
    targets = encode_targets(masks, style)
    split = loop.SplitData(masks.clone(), targets, targets > decision_threshold(style), ["P"] * 6,
                           masks=masks, style=style)
    config = AugmentConfig(flip=True, rotate_deg=45.0, scale=(0.8, 1.2), translate=0.2)
    index, cpu = torch.arange(6), torch.device("cpu")
    _, augmented = split.augmented_batch(index, cpu, config, to_device_generator(3, cpu))
    _, warped = augment_batch(masks.clone(), masks, config, to_device_generator(3, cpu))  # the same draws
    assert torch.equal(augmented, encode_targets(warped, style))
    if style == "grey":
        assert set(augmented.unique().tolist()) == {0.5, 1.0}  # never 0 where content moved in


def test_every_rank_takes_the_same_number_of_steps():
    one, two = Runtime(torch.device("cpu"), "fp32"), Runtime(torch.device("cpu"), "fp32", rank=1, world_size=2)
    assert loop.steps_per_epoch(32, one, 5) == 7
    assert (loop.steps_per_epoch(33, two, 16), loop.steps_per_epoch(34, two, 16)) == (1, 2)
    with pytest.raises(ConfigError, match="1 training slice"):
        loop.steps_per_epoch(1, two, 16)


def test_the_stop_vote_of_distributed_ranks_stays_on_the_host(monkeypatch):
    seen = []

    def other_rank_votes_yes(tensor, op=None, group=None):
        seen.append((tensor.device.type, group))
        tensor += 1

    monkeypatch.setattr(torch.distributed, "all_reduce", other_rank_votes_yes)
    runtime = Runtime(torch.device("cuda"), "bf16", rank=0, world_size=2, control_group="host group")
    assert any_rank(False, runtime) is True
    assert seen == [("cpu", "host group")]  # never a device tensor: reading it would wait for the GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_steps_never_wait_for_the_gpu(tiny_dataset, tmp_path):
    """Host-device syncs per epoch are allowed (loss, validation, checkpoint); per step none: a run
    with 4x the steps per epoch must sync exactly as often."""
    import warnings

    def syncs(batch_size: int) -> int:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run(tiny_dataset, tmp_path / f"b{batch_size}", device="cuda", epochs=1, batch_size=batch_size,
                    elastic=2.0, ema=0.99)  # the average moves on the device too
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(2) == syncs(8)  # 16 vs 4 steps


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_a_data_error(tmp_path):
    weights = build_model("unet", width=4, depth=2).state_dict()
    torch.save({"model": weights, "config": TrainConfig(width=8, depth=2).to_dict()}, tmp_path / "wider.pt")
    with pytest.raises(DataError, match=r"wider.pt: the checkpoint's weights do not fit .*size mismatch"):
        model_from_checkpoint(tmp_path / "wider.pt")
    torch.save({"model": weights, "config": {"target": ["endo"]}}, tmp_path / "partial.pt")
    with pytest.raises(DataError, match=r"partial.pt: .*KeyError: 'arch'"):
        model_from_checkpoint(tmp_path / "partial.pt")


class CodeRunningPayload:
    """Unpickled by a plain ``torch.load``, this would create a folder: a checkpoint that runs code."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        return os.makedirs, (str(self.folder),)


def test_a_checkpoint_cannot_run_code_when_loaded(tmp_path):
    torch.save({"model": CodeRunningPayload(tmp_path / "ran")}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match=r"evil.pt: not an rvseg checkpoint: it holds objects other than tensors") \
            as caught:
        load_checkpoint(tmp_path / "evil.pt")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "ran").exists()
    (tmp_path / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a file of another kind
    with pytest.raises(DataError, match=r"picture.png: not a PyTorch checkpoint file \(give a run folder"):
        load_checkpoint(tmp_path / "picture.png")


def test_a_checkpoint_from_before_an_option_existed_resumes(tiny_dataset, tmp_path):
    """last.pt written by an older rvseg lacks newer options: they count as their defaults, so the
    run continues instead of being refused as 'changed'."""
    from rvseg.train.checkpoint import save_checkpoint

    run(tiny_dataset, tmp_path / "run", epochs=2, pause_after=1)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    del state["config"]["cuda_graph"]
    del state["config"]["target"]  # a field whose default is made by a factory (["endo"])
    save_checkpoint(tmp_path / "run" / "last.pt", state)
    train(tiny_dataset, tmp_path / "run", TrainConfig(**{**TINY, "epochs": 2}), resume=True, verbose=False)
    assert [int(r["epoch"]) for r in metrics(tmp_path / "run")] == [1, 2]


@pytest.mark.parametrize("options, message", [
    ({"target": "endo"}, "option target must be a list of names"),
    ({"val_patients": "P03"}, "option val_patients must be a list of names"),
    ({"epochs": "2"}, "option epochs must be a whole number, not '2'"),
    ({"lr": "1e-3"}, "option lr must be a number"),
    ({"loss": "dice_bce"}, "unknown loss 'dice_bce'; choose one of dice, "),
    ({"optimizer": "adamx"}, "unknown optimizer 'adamx'"),
    ({"scheduler": "onecycle"}, "unknown scheduler 'onecycle'"),
    ({"arch": "resnet"}, "unknown model 'resnet'"),
])
def test_a_config_built_in_python_with_wrong_types_is_one_clear_error(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options).validate()
    TrainConfig(switch_tau=0.3).validate()  # a number where the text "auto" may also stand


def test_numpy_numbers_in_a_python_built_config_are_accepted_and_saved_as_plain_numbers(tmp_path):
    """Sweeping options with np.arange or reading them from an array gives NumPy scalars: they are
    numbers, and config.yaml (safe YAML) must still be writable."""
    import numpy as np
    import yaml

    config = TrainConfig(width=np.int64(16), val_fraction=np.float32(0.25), lr=np.float64(1e-3),
                         augment=np.bool_(False), switch_tau=np.float32(0.5),
                         val_patients=list(np.unique(["P14", "P13"])), loss=np.str_("dice"))
    config.validate()
    config.save(tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (saved["width"], saved["val_fraction"], saved["lr"], saved["augment"], saved["switch_tau"]) == (
        16, 0.25, 1e-3, False, 0.5)
    assert type(saved["width"]) is int and type(saved["augment"]) is bool
    assert saved["val_patients"] == ["P13", "P14"] and saved["loss"] == "dice"
    with pytest.raises(ConfigError, match="option width must be a whole number"):
        TrainConfig(width=np.float64(16.0)).validate()
    with pytest.raises(ConfigError, match="option augment must be True or False"):
        TrainConfig(augment=1).validate()


def test_training_leaves_the_callers_random_state_and_plotting_backend_alone(tiny_dataset, tmp_path):
    import matplotlib

    matplotlib.use("svg")  # a notebook's own choice
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    try:
        run(tiny_dataset, tmp_path / "run", epochs=1, fraction=0.25)
        assert torch.equal(torch.rand(3), expected) and matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use("Agg")
    assert (tmp_path / "run" / "progress.png").read_bytes()[:4] == b"\x89PNG"
