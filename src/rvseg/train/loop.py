"""``rvseg train``: the training loop, readable top to bottom in :func:`train`.

The prepared set is held on the training device as tensors (a few MB for RVSC), so a step is
index -> augment on device -> forward/backward, and the GPU never waits for a CPU data loader.
Sets too large for the device stay in (pinned) host memory and each batch is copied over.

Run folder (``RUN/``): ``config.yaml`` (resolved), ``metrics.csv``, ``progress.png``, ``last.pt``,
``best.pt`` and, at the end, ``summary.json``. See :mod:`rvseg.train.checkpoint` for what the
checkpoints hold and why a resumed run continues exactly.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rvseg import __version__
from rvseg.data.dataset import PreparedDataset, encode_targets, load_dataset
from rvseg.data.splits import split_patients, training_share
from rvseg.errors import ConfigError, RvsegError
from rvseg.io import write_json
from rvseg.losses import build_loss
from rvseg.metrics import dice_per_image
from rvseg.models import build_model, count_parameters
from rvseg.train.augment import AugmentConfig, augment_batch, to_device_generator
from rvseg.train.checkpoint import load_checkpoint, save_checkpoint
from rvseg.train.config import TrainConfig
from rvseg.train.optim import build_optimizer, build_scheduler
from rvseg.train.progress import MetricsLog, ProgressLine, draw_progress
from rvseg.train.runtime import Runtime, all_reduce_sum, setup_runtime, teardown_runtime

#: A slice whose target covers less than this share of the image counts as "small" for oversampling.
SMALL_FOREGROUND = 0.01
#: Checkpoints are written at most this share of the time (the rest is training).
CHECKPOINT_OVERHEAD = 0.1
#: progress.png is redrawn at most this often (seconds), and at the end.
PLOT_INTERVAL_S = 30.0


class TrainingDiverged(RvsegError):
    """The loss became NaN or infinite."""


@dataclass
class SplitData:
    """One split as tensors: images (N, C, H, W), targets (N, L, H, W) in [0, 1], hard masks (N, L, H, W) bool."""

    images: torch.Tensor
    targets: torch.Tensor
    hard: torch.Tensor
    patients: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: torch.Tensor, device: torch.device):
        if self.images.device == device:
            return self.images[index], self.targets[index], self.hard[index]
        index = index.cpu()
        return tuple(t[index].to(device, non_blocking=True) for t in (self.images, self.targets, self.hard))


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so it can save and leave."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self.handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): signals stay as they are
                pass
        return self

    def handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def choose_indices(data: PreparedDataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Training and validation slice indices of the patient-wise split, after ``--fraction``."""
    channels = data.label_indices(config.target)
    split = split_patients(data.patients, val_patients=config.val_patients or None, fold=config.fold,
                           folds=config.folds, seed=config.split_seed, val_fraction=config.val_fraction)
    usable = data.present[:, channels].all(axis=1)  # a missing label is unknown, not empty
    train_idx = np.array([i for i in data.indices_of_patients(split.train) if usable[i]], dtype=np.int64)
    val_idx = np.array([i for i in data.indices_of_patients(split.val) if usable[i]], dtype=np.int64)
    patients = data.column("patient")
    train_idx = training_share(train_idx, [patients[i] for i in train_idx], config.fraction, config.seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ConfigError(f"the split leaves {len(train_idx)} training and {len(val_idx)} validation slices "
                          f"carrying {', '.join(config.target)}")
    return train_idx, val_idx, split.train, split.val


def split_tensors(data: PreparedDataset, indices: np.ndarray, config: TrainConfig, device: torch.device) -> SplitData:
    channels = data.label_indices(config.target)
    masks = torch.from_numpy(data.masks[indices][:, channels].astype(np.float32))
    images = torch.from_numpy(data.images[indices])
    targets = encode_targets(masks, data.mask_style)
    hard = targets > decision_threshold(data.mask_style)
    nbytes = images.nbytes + targets.nbytes + hard.nbytes
    if device.type == "cuda" and nbytes > 0.5 * torch.cuda.mem_get_info(device)[0]:
        # Too large to hold on the device: stream batches from pinned host memory instead.
        return SplitData(images.pin_memory(), targets.pin_memory(), hard.pin_memory(),
                         [data.rows[i]["patient"] for i in indices])
    return SplitData(images.to(device), targets.to(device), hard.to(device),
                     [data.rows[i]["patient"] for i in indices])


def decision_threshold(mask_style: str) -> float:
    """Probability above which a pixel is called foreground: 0.75 on the grey (0.5 / 1) encoding."""
    return 0.75 if mask_style == "grey" else 0.5


def resolve_tau(config: TrainConfig, train: SplitData) -> float | None:
    """``switch_tau``: a number, or ``auto`` = the mean foreground share of the training split."""
    if config.loss != "switching":
        return None
    if config.switch_tau == "auto":
        return float(train.hard.float().mean())
    try:
        return float(config.switch_tau)
    except ValueError:
        raise ConfigError(f"--switch-tau must be a number or auto, not {config.switch_tau!r}") from None


def epoch_order(train: SplitData, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The epoch's sample order; slices with < 1% foreground drawn ``oversample_small`` times as often."""
    n = len(train)
    if config.oversample_small == 1.0:
        return torch.randperm(n, generator=generator)
    small = train.hard[:, 0].flatten(1).float().mean(dim=1).cpu() < SMALL_FOREGROUND
    weights = torch.where(small, config.oversample_small, 1.0)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


@torch.no_grad()
def validate(model: nn.Module, val: SplitData, loss_fn, runtime: Runtime, batch_size: int, threshold: float):
    """Mean validation loss and mean per-image Dice per label (summed over ranks)."""
    model.eval()
    shard = torch.arange(runtime.rank, len(val), runtime.world_size)
    loss_sum = torch.zeros((), device=runtime.device)
    dice_sum = torch.zeros(val.targets.shape[1], device=runtime.device)
    for start in range(0, len(shard), batch_size):
        images, targets, hard = val.batch(shard[start:start + batch_size].to(val.images.device), runtime.device)
        if runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += loss_fn(logits, targets) * len(images)
        dice_sum += dice_per_image(torch.sigmoid(logits) > threshold, hard).sum(dim=0)
    totals = all_reduce_sum(torch.cat([loss_sum.view(1), dice_sum]), runtime)
    model.train()
    return float(totals[0]) / len(val), (totals[1:] / len(val)).tolist()


def train(dataset: str | Path, out: str | Path, config: TrainConfig, *, resume: bool = False,
          verbose: bool = True) -> dict:
    """Train one model; returns the run summary (also ``RUN/summary.json``)."""
    runtime = setup_runtime(config.device, config.precision)
    try:
        return run(Path(dataset), Path(out), config, runtime, resume=resume, verbose=verbose and runtime.is_main)
    finally:
        teardown_runtime(runtime)


def run(dataset: Path, out: Path, config: TrainConfig, runtime: Runtime, *, resume: bool, verbose: bool) -> dict:
    # ---- data: the patient-wise split, held on the device
    data = load_dataset(dataset)
    train_idx, val_idx, train_patients, val_patients = choose_indices(data, config)
    train_set = split_tensors(data, train_idx, config, runtime.device)
    val_set = split_tensors(data, val_idx, config, runtime.device)
    threshold = decision_threshold(data.mask_style)
    config.resolved_tau = resolve_tau(config, train_set)
    config.data_hash, config.rvseg_version = data.meta["content_hash"], __version__
    data_info = {"in_channels": int(data.images.shape[1]), "labels": config.target, "mask_style": data.mask_style,
                 "content_hash": data.meta["content_hash"], "prepare": data.meta["options"],
                 "train_patients": train_patients, "val_patients": val_patients}

    # ---- model, loss, optimisation
    torch.manual_seed(config.seed)
    model = build_model(config.arch, in_channels=data_info["in_channels"], out_channels=len(config.target),
                        width=config.width, depth=config.depth, dropout=config.dropout).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(config.loss, focal_alpha=config.focal_alpha, focal_gamma=config.focal_gamma,
                         switch_lambda=config.switch_lambda, switch_tau=config.resolved_tau,
                         switch_per=config.switch_per)
    optimizer = build_optimizer(model.parameters(), config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    augment = AugmentConfig(flip=True, rotate_deg=config.rotate_deg, scale=(config.scale_min, config.scale_max),
                            translate=config.translate, intensity=config.intensity, elastic=config.elastic) \
        if config.augment else None
    order_gen = torch.Generator().manual_seed(config.seed)  # identical on every rank: shards never overlap
    augment_gen = to_device_generator(config.seed * 1009 + runtime.rank + 1, runtime.device)

    # ---- where we start: fresh, or exactly where last.pt left off
    epoch, step, order, loss_sum, loss_count = 0, 0, None, 0.0, 0
    best = {"score": -1.0, "epoch": 0, "dice": []}
    if resume and (out / "last.pt").is_file():
        state = load_checkpoint(out / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        order_gen.set_state(state["order_generator"])
        augment_gen.set_state(state["augment_generators"][runtime.rank].to(augment_gen.get_state().device))
        epoch, step, order = state["epoch"], state["step"], state["order"]
        loss_sum, loss_count, best = state["loss_sum"], state["loss_count"], state["best"]
    elif resume and runtime.is_main and verbose:
        print(f"no checkpoint in {out}: starting from scratch")
    elif not resume and (out / "last.pt").is_file():
        raise ConfigError("run folder already holds a run; use --resume to continue it or choose another --out", out)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.yaml")
    train_model = DistributedDataParallel(model) if runtime.distributed else model
    if config.compile:
        train_model = torch.compile(train_model)
    best_weights = None

    def checkpoint(epoch_: int, step_: int, order_, loss_sum_: float, loss_count_: int) -> None:
        nonlocal best_weights
        generators = [augment_gen.get_state()]
        if runtime.distributed:  # every rank's augmentation stream, so a resumed DDP run continues exactly
            generators = [torch.empty_like(generators[0]) for _ in range(runtime.world_size)]
            torch.distributed.all_gather_object(generators, augment_gen.get_state())
        if not runtime.is_main:
            return
        save_checkpoint(out / "last.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "order_generator": order_gen.get_state(),
            "augment_generators": [g.cpu() for g in generators], "epoch": epoch_, "step": step_, "order": order_,
            "loss_sum": loss_sum_, "loss_count": loss_count_, "best": best, "config": config.to_dict(),
            "data": data_info})
        if best_weights is not None:
            save_checkpoint(out / "best.pt", {"model": best_weights, "config": config.to_dict(), "data": data_info,
                                              "epoch": best["epoch"], "dice": best["dice"]})
            best_weights = None

    metrics = MetricsLog(out / "metrics.csv", resume_until_epoch=epoch if resume else None)
    progress = ProgressLine(config.epochs, epoch, enabled=verbose)
    if verbose:
        print(f"training {config.arch} ({count_parameters(model):,} parameters) on {len(train_set)} slices of "
              f"{len(train_patients)} patients, validating on {len(val_set)} slices of {val_patients}; "
              f"{runtime.device}, {runtime.precision}, {runtime.world_size} process(es)")
    started, last_save_cost, last_save_at, last_plot_at = time.perf_counter(), 0.0, time.perf_counter(), 0.0
    steps_per_epoch = len(train_set) // runtime.world_size // config.batch_size \
        + (len(train_set) // runtime.world_size % config.batch_size > 0)
    trained_images = 0

    # ---- the loop
    with StopRequest() as stop:
        while epoch < config.epochs:
            epoch_started = time.perf_counter()
            if step == 0:
                order, loss_sum, loss_count = epoch_order(train_set, config, order_gen), 0.0, 0
            shard = order[runtime.rank::runtime.world_size][: steps_per_epoch * config.batch_size]
            shard = shard.to(train_set.images.device)
            running = torch.zeros((), device=runtime.device)
            while step < steps_per_epoch:
                images, targets, _ = train_set.batch(shard[step * config.batch_size:(step + 1) * config.batch_size],
                                                     runtime.device)
                if augment is not None:
                    images, targets = augment_batch(images, targets, augment, augment_gen)
                if runtime.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with runtime.autocast():
                    logits = train_model(images)
                loss = loss_fn(logits.float(), targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                running += loss.detach()
                step += 1
                trained_images += len(images)
                if any_rank(stop.requested, runtime):
                    checkpoint(epoch, step, order, loss_sum + float(running), loss_count + step)
                    if verbose:
                        print(f"\ninterrupted: saved {out / 'last.pt'} (epoch {epoch + 1}, step {step}); "
                              f"continue with --resume")
                    raise KeyboardInterrupt
            loss_sum, loss_count = loss_sum + float(running), steps_per_epoch
            train_loss = float(all_reduce_sum(torch.tensor([loss_sum / loss_count], device=runtime.device),
                                              runtime)) / runtime.world_size
            if not np.isfinite(train_loss):
                raise TrainingDiverged(f"the training loss became {train_loss} in epoch {epoch + 1}; the last good "
                                       f"checkpoint is kept (try a lower --lr)", out)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            val_loss, val_dice = validate(model, val_set, loss_fn, runtime, config.batch_size, threshold)
            epoch, step = epoch + 1, 0
            row = {"epoch": epoch, "train_loss": f"{train_loss:.6f}", "val_loss": f"{val_loss:.6f}",
                   **{f"val_dice_{label}": f"{d:.6f}" for label, d in zip(config.target, val_dice)},
                   "lr": f"{lr:.6g}", "seconds": f"{time.perf_counter() - epoch_started:.3f}"}
            score = float(np.mean(val_dice))
            if score > best["score"]:
                best = {"score": score, "epoch": epoch, "dice": val_dice}
                if runtime.is_main:
                    best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if runtime.is_main:
                metrics.append(row)
            final = epoch == config.epochs or epoch == config.pause_after
            due = time.perf_counter() - last_save_at > last_save_cost / CHECKPOINT_OVERHEAD
            if any_rank(final or due, runtime):
                save_started = time.perf_counter()
                checkpoint(epoch, 0, None, 0.0, 0)
                last_save_at = time.perf_counter()
                last_save_cost = last_save_at - save_started
            if runtime.is_main and (final or time.perf_counter() - last_plot_at > PLOT_INTERVAL_S):
                draw_progress(metrics.rows, out / "progress.png")
                last_plot_at = time.perf_counter()
            dice_text = " ".join(f"{label} {d:.3f}" for label, d in zip(config.target, val_dice))
            progress.update(epoch, f"loss {train_loss:.4f}/{val_loss:.4f} dice {dice_text}")
            if epoch == config.pause_after and epoch < config.epochs:
                if verbose:
                    print(f"paused after epoch {epoch}; continue with --resume")
                return {"paused_at_epoch": epoch}
    progress.close()

    seconds = time.perf_counter() - started
    summary = {
        "best_epoch": best["epoch"], "best_val_dice": dict(zip(config.target, best["dice"])),
        "final": metrics.rows[-1] if metrics.rows else {}, "epochs": config.epochs, "seconds": round(seconds, 2),
        "train_images_per_second": round(trained_images * runtime.world_size / seconds, 1),
        "n_train": len(train_set), "n_val": len(val_set), "train_patients": train_patients,
        "val_patients": val_patients, "device": str(runtime.device), "precision": runtime.precision,
        "world_size": runtime.world_size, "resolved_tau": config.resolved_tau,
    }
    if runtime.is_main:
        write_json(out / "summary.json", summary)
        if verbose:
            print(f"best val Dice {best['score']:.4f} at epoch {best['epoch']}; run folder {out}")
    return summary


def any_rank(flag: bool, runtime: Runtime) -> bool:
    """True if ``flag`` holds on any rank, so that every rank takes the same branch (no deadlock)."""
    if not runtime.distributed:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=runtime.device), runtime) > 0)
