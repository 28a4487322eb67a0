"""The training loop: every flag does what it says, runs resume exactly, survive signals and NaNs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rvseg.cli import main
from rvseg.data.dataset import load_dataset
from rvseg.errors import ConfigError
from rvseg.train import loop
from rvseg.train.checkpoint import load_checkpoint, model_from_checkpoint
from rvseg.train.config import TrainConfig, load_config
from rvseg.train.loop import TrainingDiverged, train

TINY = dict(width=4, depth=2, epochs=2, batch_size=8, lr=1e-3, device="cpu", val_patients=["S04"])


def run(dataset, out, **options):
    config = TrainConfig(**{**TINY, **options})
    return train(dataset, out, config, verbose=False)


def metrics(run_dir: Path, drop=("seconds",)) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


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


def test_two_targets_give_two_channels_and_two_dice_columns(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "run", target=["endo", "epi"], epochs=1)
    assert {"val_dice_endo", "val_dice_epi"} <= set(metrics(tmp_path / "run")[0])
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
        summary = run(tiny_dataset, tmp_path / f"f{fold}", val_patients=[], fold=fold, folds=5, epochs=1,
                      fraction=0.25)
        assert not set(summary["val_patients"]) & set(summary["train_patients"])
        seen += summary["val_patients"]
    assert sorted(seen) == [f"S{p:02d}" for p in range(5)]


def test_bf16_on_cpu_runs(tiny_dataset, tmp_path):
    summary = run(tiny_dataset, tmp_path / "run", precision="bf16", epochs=1, fraction=0.25)
    assert summary["precision"] == "bf16"


def test_resume_after_pause_equals_one_uninterrupted_run(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "once", epochs=4, scheduler="cosine")
    run(tiny_dataset, tmp_path / "twice", epochs=4, scheduler="cosine", pause_after=2)
    assert len(metrics(tmp_path / "twice")) == 2
    train(tiny_dataset, tmp_path / "twice", TrainConfig(**{**TINY, "epochs": 4, "scheduler": "cosine"}),
          resume=True, verbose=False)
    assert metrics(tmp_path / "twice") == metrics(tmp_path / "once")


def test_existing_run_needs_resume(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "run", epochs=1, fraction=0.25)
    with pytest.raises(ConfigError, match="--resume"):
        run(tiny_dataset, tmp_path / "run", epochs=1, fraction=0.25)


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
    with pytest.raises(TrainingDiverged, match="epoch 2.*last good checkpoint"):
        run(tiny_dataset, tmp_path / "run", epochs=3)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_yaml_config_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss: focal\nepochs: 7\nval-patients: [P13, P14]\nlr: 0.01\n")
    config = load_config(path, {"lr": "0.002"})
    assert (config.loss, config.epochs, config.val_patients, config.lr) == ("focal", 7, ["P13", "P14"], 0.002)
    path.write_text("nonsense: 1\n")
    with pytest.raises(ConfigError, match="nonsense"):
        load_config(path)


def test_cli_reports_bad_options_without_traceback(tiny_dataset, tmp_path, capsys):
    code = main(["train", str(tiny_dataset), "--out", str(tmp_path / "r"), "--loss", "wrong", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown loss 'wrong'" in err and "Traceback" not in err
    code = main(["train", str(tiny_dataset), "--out", str(tmp_path / "r"), "--epochs", "many"])
    assert code == 2 and "not a valid int" in capsys.readouterr().err


def cli_command(dataset, out, *extra):
    flags = ["--width", "4", "--depth", "2", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--val-patients", "S04"]
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


def test_two_rank_ddp_on_cpu_writes_one_consistent_run(tiny_dataset, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                str(29500 + os.getpid() % 1000)]
    command = cli_command(tiny_dataset, tmp_path / "ddp", "--epochs", "2", "--quiet")
    result = subprocess.run(torchrun + command[1:], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = metrics(tmp_path / "ddp")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["epoch"] == 2 and len(state["augment_generators"]) == 2
    summary = yaml.safe_load((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_train"] == 32
    model, _, _ = model_from_checkpoint(tmp_path / "ddp")
    assert not any(k.startswith("module.") for k in model.state_dict())


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
    hard[:50, :, :5, :5] = True  # 25% foreground; the other 50 slices are empty (< 1%)
    data = loop.SplitData(hard.float(), hard.float(), hard, ["P"] * 100)
    config = TrainConfig(oversample_small=4.0)
    order = loop.epoch_order(data, config, torch.Generator().manual_seed(0))
    assert len(order) == 100
    assert (order >= 50).float().mean() > 0.7  # expected 4/5
    uniform = loop.epoch_order(data, TrainConfig(), torch.Generator().manual_seed(0))
    assert sorted(uniform.tolist()) == list(range(100))


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
