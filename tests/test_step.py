"""The training step: the CUDA-graph path's host-side parts on the CPU, and the graph itself on a GPU."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch

from rvseg.cli import main
from rvseg.losses import build_loss
from rvseg.models import build_model
from rvseg.train.config import TrainConfig
from rvseg.train.loop import train
from rvseg.train.optim import GRAPH_SAFE, OPTIMIZERS, build_optimizer, build_scheduler
from rvseg.train.runtime import Runtime
from rvseg.train.step import (
    GraphedStep,
    device_learning_rates,
    make_train_step,
    restore_training_state,
    snapshot_training_state,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", width=4, depth=2)


def train_steps(model, optimizer, batches) -> None:
    for images, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(model(images), targets).backward()
        optimizer.step()


def batches(seed: int, count: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 16, 16, generator=generator), (torch.rand(4, 1, 16, 16, generator=generator) > 0.7)
             .float()) for _ in range(count)]


@pytest.mark.parametrize("name, options", [("adam", {}), ("adamw", {"weight_decay": 0.01}),
                                           ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True})])
def test_warmup_then_restore_trains_exactly_like_a_fresh_start(name, options):
    """The graph's warm-up steps must leave no trace: weights, BatchNorm statistics and the
    optimizer's moments put back (created state zeroed) give the same training as no warm-up."""
    config = TrainConfig(optimizer=name, lr=1e-2, **options)
    fresh = tiny_model()
    fresh_optimizer = build_optimizer(fresh.parameters(), config)
    warmed = tiny_model()
    warmed_optimizer = build_optimizer(warmed.parameters(), config)
    saved = snapshot_training_state(warmed, warmed_optimizer)
    train_steps(warmed, warmed_optimizer, batches(seed=1))  # the warm-up: different data
    restore_training_state(warmed, warmed_optimizer, saved)
    assert warmed_optimizer.state  # the state exists now, zeroed
    train_steps(fresh, fresh_optimizer, batches(seed=2))
    train_steps(warmed, warmed_optimizer, batches(seed=2))
    for (key, a), b in zip(fresh.state_dict().items(), warmed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=key)


def test_restore_puts_back_existing_optimizer_state():
    config = TrainConfig(optimizer="adam", lr=1e-2)
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), config)
    train_steps(model, optimizer, batches(seed=3))  # state with three steps in it
    expected_model = copy.deepcopy(model.state_dict())
    expected_state = copy.deepcopy(optimizer.state_dict()["state"])
    saved = snapshot_training_state(model, optimizer)
    train_steps(model, optimizer, batches(seed=4))
    restore_training_state(model, optimizer, saved)
    for key, value in expected_model.items():
        assert torch.equal(model.state_dict()[key], value), key
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(expected_state[index][key])), key


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler\.step\(\)` before")
@pytest.mark.parametrize("scheduler", ["cosine", "step", "sgdr", "none"])
def test_schedulers_fill_the_device_learning_rate_in_place(scheduler):
    """Under --cuda-graph the learning rate is a tensor the graph reads: every schedule must update
    that tensor (not replace it) and give the same curve as with a float learning rate."""
    config = TrainConfig(lr=0.1, scheduler=scheduler, epochs=10, step_size=3, gamma=0.5, sgdr_t0=3, min_lr=1e-4)
    reference = build_optimizer(tiny_model().parameters(), config)
    reference_scheduler = build_scheduler(reference, config)
    optimizer = build_optimizer(tiny_model().parameters(), config)
    lr_scheduler = build_scheduler(optimizer, config)
    (rate,) = device_learning_rates(optimizer, torch.device("cpu"))
    for _ in range(config.epochs):
        reference_scheduler.step()
        lr_scheduler.step()
        assert optimizer.param_groups[0]["lr"] is rate
        assert float(rate) == pytest.approx(reference.param_groups[0]["lr"], rel=1e-6)


def test_a_scheduler_that_assigns_a_float_is_copied_into_the_graph_rate():
    model = tiny_model()
    optimizer = build_optimizer(model.parameters(), TrainConfig(lr=0.1), for_cuda_graph=True)
    runtime = Runtime(torch.device("cpu"), "fp32")
    step = GraphedStep(model, None, optimizer, runtime, channels_last=False, eager=None, batch_size=4)
    (rate,) = step.learning_rates
    optimizer.param_groups[0]["lr"] = 0.025
    step.sync_learning_rates()
    assert optimizer.param_groups[0]["lr"] is rate and float(rate) == pytest.approx(0.025)


def test_a_graphed_step_refuses_an_optimizer_that_is_not_graph_safe():
    model = tiny_model()
    plain = build_optimizer(model.parameters(), TrainConfig(lr=0.1))
    with pytest.raises(ValueError, match="for_cuda_graph=True"):
        GraphedStep(model, None, plain, Runtime(torch.device("cpu"), "fp32"), channels_last=False, eager=None,
                    batch_size=4)


def test_graph_safe_options_are_accepted_by_each_optimizer():
    assert set(GRAPH_SAFE) == set(OPTIMIZERS)
    for name, options in GRAPH_SAFE.items():
        optimizer = build_optimizer(tiny_model().parameters(), TrainConfig(optimizer=name, momentum=0.9),
                                    for_cuda_graph=True)
        assert all(optimizer.param_groups[0][key] == value for key, value in options.items())


def test_cuda_graph_needs_cuda_and_excludes_compile(tiny_dataset, tmp_path, capsys):
    base = ["train", str(tiny_dataset), "--out", str(tmp_path / "r"), "--width", "4", "--depth", "2",
            "--val-patients", "S04", "--epochs", "1"]
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cpu", "--cuda-graph"]) == 2
        assert "--cuda-graph needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before the run folder is made
    assert main([*base, "--cuda-graph", "--compile"]) == 2
    assert "choose --cuda-graph or --compile" in capsys.readouterr().err


# ---------------------------------------------------------------- on a GPU

GPU_RUN = dict(width=8, depth=2, epochs=4, lr=1e-3, device="cuda", precision="fp32", val_patients=["S04"],
               scheduler="cosine")


def metric_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@needs_cuda
@pytest.mark.parametrize("optimizer, batch_size, deep_supervision, joint", [
    ("adam", 8, 0, False), ("adam", 12, 0, False), ("sgd", 12, 0, False), ("adam", 12, 1, False), ("adam", 8, 0, True)])
def test_graphed_training_follows_the_eager_run(tiny_dataset, tmp_path, monkeypatch, optimizer, batch_size,
                                                deep_supervision, joint):
    """Same data order, augmentation and schedule: the graphed run's losses and Dice track the eager
    run's (batch 12 leaves a partial last batch, which runs eagerly between replays; a deeply
    supervised model's step returns a tuple of outputs; a joint switching model has one threshold per
    target inside the graph)."""
    options = {**GPU_RUN, "optimizer": optimizer, "batch_size": batch_size, "momentum": 0.9,
               "deep_supervision": deep_supervision,
               **({"target": ["endo", "epi"], "loss": "switching"} if joint else {})}
    train(tiny_dataset, tmp_path / "eager", TrainConfig(**options), verbose=False)
    captures = []
    capture = GraphedStep.capture
    monkeypatch.setattr(GraphedStep, "capture", lambda self, *a: (captures.append(1), capture(self, *a)))
    train(tiny_dataset, tmp_path / "graph", TrainConfig(**options, cuda_graph=True), verbose=False)
    assert captures == [1]  # one capture, replayed for every full batch
    eager, graphed = metric_rows(tmp_path / "eager"), metric_rows(tmp_path / "graph")
    assert [r["lr"] for r in graphed] == pytest.approx([r["lr"] for r in eager], rel=1e-6)
    for key in ("train_loss", "val_loss"):
        assert [r[key] for r in graphed] == pytest.approx([r[key] for r in eager], rel=2e-3, abs=2e-4), key


@needs_cuda
def test_graphed_run_resumes_where_it_paused(tiny_dataset, tmp_path):
    """A resumed graphed run captures its graph again (warm-up and restore included) and continues
    the uninterrupted run (to cuDNN's run-to-run rounding: its backward kernels sum in any order)."""
    options = {**GPU_RUN, "batch_size": 12, "cuda_graph": True}
    train(tiny_dataset, tmp_path / "once", TrainConfig(**options), verbose=False)
    train(tiny_dataset, tmp_path / "twice", TrainConfig(**options, pause_after=2), verbose=False)
    train(tiny_dataset, tmp_path / "twice", TrainConfig(**options), resume=True, verbose=False)
    once, twice = metric_rows(tmp_path / "once"), metric_rows(tmp_path / "twice")
    assert [r["epoch"] for r in twice] == [1, 2, 3, 4]
    for key in ("train_loss", "val_loss", "lr"):
        assert [r[key] for r in twice] == pytest.approx([r[key] for r in once], rel=1e-4, abs=1e-6), key


@needs_cuda
def test_a_graph_replay_never_waits_for_the_gpu():
    """After the capture (which synchronises once, by design), a step is copies and one replay.

    Counting sync warnings over whole runs (as the eager loop's test does) does not work here: the
    capture empties the allocator's cache, and how many blocks that frees depends on the batch size.
    """
    runtime = Runtime(torch.device("cuda"), "bf16")
    model = tiny_model().cuda().to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), TrainConfig(lr=1e-3), for_cuda_graph=True)
    step = make_train_step(model, build_loss("dice"), optimizer, runtime, channels_last=True, batch_size=4,
                           cuda_graph=True)
    images, targets = (t.cuda() for t in batches(seed=5, count=1)[0])
    step(images, targets)  # captures, then replays
    torch.cuda.set_sync_debug_mode("error")
    try:
        # Each call returns the graph's one loss tensor: keep a copy of each (device-side, no wait).
        losses = torch.stack([step(images, targets).clone() for _ in range(5)])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(torch.isfinite(losses).all()) and len(set(losses.tolist())) > 1  # training moved
