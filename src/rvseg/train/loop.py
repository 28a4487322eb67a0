"""``rvseg train``: the training loop, readable top to bottom in :func:`train`.

The prepared set is held on the training device as tensors (a few MB for RVSC), so a step is
index -> augment on device -> forward/backward, and the GPU never waits for a CPU data loader.
Sets too large for the device stay in (pinned) host memory and each batch is copied over.

Run folder (``RUN/``): ``config.yaml`` (resolved), ``metrics.csv``, ``progress.png``, ``last.pt``,
``best.pt`` and, at the end, ``summary.json``. See :mod:`rvseg.train.checkpoint` for what the
checkpoints hold and why a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import hashlib
import math
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rvseg import __version__
from rvseg.checks import as_path, check_type
from rvseg.data.dataset import PreparedDataset, load_dataset
from rvseg.data.outlines import fill_outlines
from rvseg.data.splits import split_patients, training_share
from rvseg.data.targets import decision_threshold, encode_targets, target_style
from rvseg.errors import ConfigError, RvsegError
from rvseg.io import write_json
from rvseg.losses import build_loss, deep_supervision_loss
from rvseg.metrics import dice_per_image
from rvseg.models import count_parameters, model_from_config
from rvseg.train.augment import AugmentConfig, augment_batch, to_device_generator
from rvseg.train.average import WeightAverage
from rvseg.train.checkpoint import RUN_CHECKPOINTS, load_checkpoint, save_checkpoint
from rvseg.train.config import TrainConfig, field_default, user_fields
from rvseg.train.folds import fold_runs
from rvseg.train.optim import (
    build_optimizer,
    build_scheduler,
    is_sgdr_cycle_end,
    replan_schedule,
    sgdr_cycle_ends,
    sgdr_mid_cycle_note,
)
from rvseg.train.progress import MetricsLog, ProgressLine, draw_progress, numeric_row
from rvseg.train.runtime import (
    Runtime,
    all_reduce_sum,
    any_rank,
    check_device_name,
    check_precision_name,
    gather_objects,
    setup_runtime,
    teardown_runtime,
)
from rvseg.train.step import check_cuda_graph, make_train_step

#: Checkpoints are written at most this share of the time (the rest is training).
CHECKPOINT_OVERHEAD = 0.1
#: progress.png is redrawn at most this often (seconds), and at the end.
PLOT_INTERVAL_S = 30.0
#: Options a resumed run may change: how long it trains, where and how it computes, and whether it keeps
#: snapshots. Any other change would make the continuation a different run than the one in ``last.pt``.
RESUME_MAY_CHANGE = ("epochs", "pause_after", "device", "precision", "compile", "snapshots")


#: Files that mark a folder as holding a run: training into it without ``--resume`` is refused.
RUN_FILES = ("last.pt", "best.pt", "summary.json", "metrics.csv")


class TrainingDiverged(RvsegError):
    """The loss became NaN or infinite."""


@dataclass
class SplitData:
    """One split as tensors: images (N, C, H, W), targets (N, L, H, W) in [0, 1], hard masks (N, L, H, W)
    bool, and, where the targets encode them (``grey``, ``outline`` styles), the filled masks (N, L, H, W)."""

    images: torch.Tensor
    targets: torch.Tensor
    hard: torch.Tensor
    patients: list[str]
    masks: torch.Tensor | None = None
    style: str = "filled"

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: torch.Tensor, device: torch.device):
        """Rows ``index`` (on the tensors' device) of images, targets and hard masks, on ``device``."""
        return tuple(rows(t, index, device) for t in (self.images, self.targets, self.hard))

    def augmented_batch(self, index: torch.Tensor, device: torch.device, config: AugmentConfig,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``index`` of images and targets, augmented. The filled masks are warped with the images
        and encoded afterwards: a warped grey encoding would gain a third value where content moves in
        from outside the image, and a warped outline would break apart."""
        images = rows(self.images, index, device)
        masks = rows(self.targets if self.masks is None else self.masks, index, device)
        images, masks = augment_batch(images, masks, config, generator)
        return images, masks if self.masks is None else encode_targets(masks, self.style)


def rows(tensor: torch.Tensor, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows ``index`` (on the tensor's device) of ``tensor``, on ``device``."""
    if tensor.device == device:
        return tensor[index]
    # Indexing makes pageable copies; pinned again, the host-to-device copy is truly asynchronous.
    return tensor[index].pin_memory().to(device, non_blocking=True)


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


def check_options(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for any option that would otherwise fail only once training starts:
    ranges (:meth:`TrainConfig.validate`), the names of the loss, optimizer, schedule, model, device and
    precision, and the model's size. A sweep checks every point with it before anything runs."""
    config.validate()
    if config.switch_tau != "auto":
        resolve_tau(config, None)  # a number, or the message
    config_loss(config, switch_tau=0.5)
    check_device_name(config.device)  # names only: a sweep's report may be read on a machine without the GPU
    check_precision_name(config.precision)
    with torch.device("meta"):  # the architecture's checks and size, without memory
        config_model(config, in_channels=1)


def config_model(config: TrainConfig, in_channels: int) -> nn.Module:
    """The network ``config`` describes, one output channel per target."""
    return model_from_config(config.to_dict(), in_channels)


def config_loss(config: TrainConfig, switch_tau: float | list[float] | None):
    """The loss ``config`` names with its parameters; ``switch_tau`` the resolved switching threshold(s)."""
    return build_loss(config.loss, focal_alpha=config.focal_alpha, focal_gamma=config.focal_gamma,
                      switch_lambda=config.switch_lambda, switch_tau=switch_tau, switch_per=config.switch_per)


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


def check_depth_fits(depth: int, shape: tuple[int, int]) -> None:
    """Refuse a U-Net depth that halves the images below one pixel: the padding to a multiple of
    2**depth would then be most of what the network sees (``--depth 9`` on 64 x 56 trains on 512 x 512)."""
    largest = max(int(size) for size in shape)
    if 2**depth > largest:
        raise ConfigError(f"--depth {depth} halves the {shape[0]} x {shape[1]} images {depth} times, below one "
                          f"pixel; at most --depth {largest.bit_length() - 1} fits them")


def partly_labelled_note(data: PreparedDataset, config: TrainConfig, patients: list[str]) -> str | None:
    """A note when slices of ``patients`` carry some but not all of the targets: :func:`choose_indices`
    leaves them out (a missing label is unknown, not empty), which rvseg evaluate, scoring each label
    on every slice that has it, does not."""
    present = data.present[data.indices_of_patients(patients)][:, data.label_indices(config.target)]
    partial = int((present.any(axis=1) & ~present.all(axis=1)).sum())
    if not partial:
        return None
    return (f"note: {partial} slice(s) carry only some of {', '.join(config.target)} and are left out of training "
            "and validation (a missing label is unknown, not empty); one model per label would use them")


def split_tensors(data: PreparedDataset, indices: np.ndarray, config: TrainConfig, device: torch.device) -> SplitData:
    channels = data.label_indices(config.target)
    masks = torch.from_numpy(data.masks[indices][:, channels].astype(np.float32))
    images = torch.from_numpy(data.images[indices])
    targets = encode_targets(masks, data.mask_style)
    hard = targets > decision_threshold(data.mask_style)
    filled = None if data.mask_style == "filled" else masks
    tensors = [images, targets, hard] + ([filled] if filled is not None else [])
    if device.type == "cuda" and sum(t.nbytes for t in tensors) > 0.5 * torch.cuda.mem_get_info(device)[0]:
        # Too large to hold on the device: stream batches from pinned host memory instead.
        placed = [t.pin_memory() for t in tensors]
    else:
        placed = [t.to(device) for t in tensors]
    return SplitData(*placed[:3], [data.rows[i]["patient"] for i in indices],
                     masks=placed[3] if filled is not None else None, style=data.mask_style)


def resolve_tau(config: TrainConfig, train: SplitData) -> float | list[float] | None:
    """``switch_tau``: a number, or ``auto`` = the mean of the training split's targets, one per target
    (a list) when there are several: the endocardium's share is smaller than the epicardium's, and one
    pooled threshold would put them on their Dice-heavy branch on different shares of the slices.

    The switching loss compares each target's mean with tau, so tau is measured on the same
    encoded targets: for filled masks that is the mean foreground share; on the grey encoding
    (0.5 background, 1 foreground) both are ``0.5 + share / 2``, so the branch still follows the
    foreground share instead of always taking the large-foreground side.
    """
    if config.loss != "switching":
        return None
    if config.switch_tau == "auto":
        means = train.targets.float().mean(dim=(0, 2, 3)).tolist()
        return means[0] if len(means) == 1 else means
    try:
        return float(config.switch_tau)
    except ValueError:
        raise ConfigError(f"--switch-tau must be a number or auto, not {config.switch_tau!r}") from None


def epoch_order(train: SplitData, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The epoch's sample order; slices whose first target covers less than ``small_foreground`` of the
    image are drawn ``oversample_small`` times as often."""
    n = len(train)
    if config.oversample_small == 1.0:
        return torch.randperm(n, generator=generator)
    regions = train.hard if train.masks is None else train.masks > 0.5  # an outline's share is not the RV's
    small = regions[:, 0].flatten(1).float().mean(dim=1).cpu() < config.small_foreground
    weights = torch.where(small, config.oversample_small, 1.0)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def steps_per_epoch(n_train: int, runtime: Runtime, batch_size: int) -> int:
    """Training steps per epoch: every rank takes the same number (its collectives must pair up),
    enough to cover the smallest rank's share of the ``n_train`` slices."""
    if n_train < runtime.world_size:
        raise ConfigError(f"{n_train} training slice(s) cannot be shared among {runtime.world_size} processes")
    return math.ceil(n_train // runtime.world_size / batch_size)


def rng_state(augment_gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random state: its augmentation generator, and torch's global generators,
    which dropout draws from."""
    state = {"augment": augment_gen.get_state(), "cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, rank: int, augment_gen: torch.Generator, device: torch.device) -> None:
    """Set this rank's random state from a ``last.pt`` written by :func:`run`."""
    augment_gen.set_state(state["augment_generators"][rank])
    torch_rng = state.get("torch_rng")  # absent in checkpoints of rvseg before it was saved
    if torch_rng is not None:
        torch.set_rng_state(torch_rng[rank]["cpu"])
        if "cuda" in torch_rng[rank] and device.type == "cuda":
            torch.cuda.set_rng_state(torch_rng[rank]["cuda"], device)


def mean_over_ranks(value: float, runtime: Runtime) -> float:
    """The mean of a float over ranks (itself on one process), in float64.

    The loss sum of an interrupted epoch is saved this way: last.pt holds one number for every
    rank, and the epoch's loss, the mean over ranks, only depends on the ranks' total.
    """
    if not runtime.distributed:
        return value
    total = all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=runtime.device), runtime)
    return float(total) / runtime.world_size


def finite_weights(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def snapshot_name(epoch: int) -> str:
    """The file of the weights an ``--snapshots`` run saves at the end of the SGDR cycle ending at ``epoch``."""
    return f"snapshot-{epoch:04d}.pt"


def kept_snapshots(out: Path, config: TrainConfig) -> list[str]:
    """The snapshot files of the run in ``out``: those of its SGDR cycle ends within its epochs (a session
    with ``--snapshots`` off leaves earlier ones; a longer session cut off and resumed shorter may leave
    one beyond the run's end, which is not this run's)."""
    if config.scheduler != "sgdr":
        return []
    ends = sgdr_cycle_ends(config.sgdr_t0, config.epochs)
    return [snapshot_name(end) for end in ends if end <= config.epochs and (out / snapshot_name(end)).is_file()]


def check_resumable(state: dict, config: TrainConfig, data_info: dict, runtime: Runtime, path: Path) -> None:
    """Refuse to continue ``last.pt`` with other options, data or number of processes: that would
    silently be another run (or fail to load), never the exact continuation ``--resume`` promises."""
    saved = state["config"]
    changed = changed_options(saved, config)
    if state["data"]["content_hash"] != data_info["content_hash"]:
        changed.append("the data set (its content hash; an rvseg before 2026-11-27 also hashed the folder the "
                       "sources were prepared from)")
    # Derived by the run itself: with the same options they differ only where rvseg changed how it draws
    # or resolves them (before 2026-11-27 --fraction drew other slices, and tau pooled the targets).
    older = "" if changed else ", as an older rvseg made them"
    drawn = state["data"].get("train_slices")
    if (drawn is None and config.fraction < 1) or (drawn is not None and drawn != data_info["train_slices"]):
        changed.append(f"the training slices (the split and the --fraction draw){older}" if drawn else
                       "the training slices drawn for --fraction, which last.pt does not record (written by an "
                       "rvseg that drew them otherwise)")
    if not same_thresholds(saved.get("resolved_tau"), config.resolved_tau):
        changed.append(f"the resolved switching threshold ({saved.get('resolved_tau')!r} -> {config.resolved_tau!r})"
                       f"{older}")
    if len(state["augment_generators"]) != runtime.world_size:
        changed.append(f"the number of processes ({len(state['augment_generators'])} -> {runtime.world_size})")
    if changed:
        raise ConfigError(f"cannot resume the run in last.pt, which differs in: {'; '.join(changed)}. Resume with "
                          f"the same settings, or train into another --out", path)


def changed_options(saved: dict, config: TrainConfig, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """The options (``--name (saved -> now)``) in which ``config`` differs from a run's saved options,
    except those a resumed run may change and ``ignore``."""
    # An option added since the run was saved counts as its default there (that is how the run trained).
    fixed = {f.name: field_default(f) for f in user_fields() if f.name not in (*RESUME_MAY_CHANGE, *ignore)}
    return [f"--{name.replace('_', '-')} ({saved.get(name, default)!r} -> {getattr(config, name)!r})"
            for name, default in fixed.items() if not same_option(saved.get(name, default), getattr(config, name))]


def slices_fingerprint(data: PreparedDataset, indices: np.ndarray) -> str:
    """A short hash of the ids of the slices ``indices`` picks: a resumed run must train on the same ones."""
    ids = ",".join(sorted(data.rows[int(i)]["id"] for i in indices))
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def same_thresholds(saved, resolved) -> bool:
    """Whether two resolved switching thresholds (None, a number, or one per target) agree, to float32
    rounding: a run resumed on another device sums its targets in another order."""
    if saved is None or resolved is None:
        return saved is resolved
    saved, resolved = np.atleast_1d(np.asarray(saved, dtype=float)), np.atleast_1d(np.asarray(resolved, dtype=float))
    return saved.shape == resolved.shape and bool(np.allclose(saved, resolved, rtol=1e-4, atol=0.0))


def same_option(saved, given) -> bool:
    """Whether two values of an option are the same, a number and its text alike (``switch_tau`` 0.03
    from Python, "0.03" from the command line)."""
    if saved == given:
        return True
    try:
        return not isinstance(saved, bool) and not isinstance(given, bool) and float(saved) == float(given)
    except (TypeError, ValueError):
        return False


def sync_buffers(model: nn.Module, runtime: Runtime) -> None:
    """Give every rank rank 0's BatchNorm statistics. DDP sends them before each training forward,
    then each rank updates its copy from its own batch; without this, the ranks would validate
    slightly different models, none of them the one saved."""
    if runtime.distributed:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


@torch.no_grad()
def validate(model: nn.Module, val: SplitData, loss_fn, runtime: Runtime, batch_size: int, threshold: float):
    """Mean validation loss and mean per-image Dice per label (summed over ranks); for the ``outline``
    style the Dice of the filled regions (one host round trip per batch, once per epoch)."""
    sync_buffers(model, runtime)
    model.eval()
    shard = torch.arange(runtime.rank, len(val), runtime.world_size, device=val.images.device)
    loss_sum = torch.zeros((), device=runtime.device)
    dice_sum = torch.zeros(val.targets.shape[1], device=runtime.device)
    for start in range(0, len(shard), batch_size):
        images, targets, hard = val.batch(shard[start:start + batch_size], runtime.device)
        if runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += loss_fn(logits, targets) * len(images)
        predicted = torch.sigmoid(logits) > threshold
        if target_style(val.style).outline:
            # Score the regions the outlines enclose, as rvseg evaluate does: a one-pixel-wide outline
            # shifted by one pixel overlaps its target hardly at all while the regions nearly coincide.
            predicted = torch.from_numpy(fill_outlines(predicted.cpu().numpy())).to(runtime.device)
            hard = rows(val.masks, shard[start:start + batch_size], runtime.device) > 0.5
        dice_sum += dice_per_image(predicted, hard).sum(dim=0)
    totals = all_reduce_sum(torch.cat([loss_sum.view(1), dice_sum]), runtime)
    model.train()
    return float(totals[0]) / len(val), (totals[1:] / len(val)).tolist()


def train(dataset: str | Path, out: str | Path, config: TrainConfig, *, resume: bool = False,
          verbose: bool = True) -> dict:
    """Train one model on a prepared data set into the run folder ``out``.

    Returns:
        the run summary (also ``out/summary.json``): ``best_epoch``, ``best_val_dice`` (label -> Dice),
        ``final`` (the last ``metrics.csv`` row as numbers), ``epochs``, ``seconds``,
        ``train_images_per_second``, ``n_train``/``n_val`` slices, ``train_patients``/``val_patients``,
        ``device``, ``precision``, ``world_size``, ``resolved_tau`` and ``snapshots`` (file names);
        ``{"paused_at_epoch": N}`` for a run stopped by ``config.pause_after``. ``out`` then holds
        ``best.pt`` (what evaluate and predict load), ``last.pt``, ``config.yaml``, ``metrics.csv``,
        ``progress.png`` and, with ``config.snapshots``, ``snapshot-EEEE.pt`` for each SGDR cycle's end
        (the weights validated at that epoch, loadable as ``best.pt`` is).

    Raises:
        ConfigError: an invalid option, or ``out`` holding a run that ``resume`` does not continue.
        DataError: the data set cannot be read or lacks a target label.
        TrainingDiverged: the loss became NaN or infinite.
    """
    check_type(config, TrainConfig, "config", " (e.g. TrainConfig(epochs=50))")
    config = copy.deepcopy(config)  # the run records what it resolves in its own copy, not in the caller's
    dataset, out = as_path(dataset, "dataset"), as_path(out, "out")
    check_options(config)
    if fold_runs(out):  # else evaluate and predict would take the folder for this one run
        raise ConfigError("folder holds the folds of a cross-validation (fold_K); train a fold into CV/fold_K, or "
                          "choose another --out", out)
    runtime = setup_runtime(config.device, config.precision)
    try:
        if config.cuda_graph:
            check_cuda_graph(runtime)  # before anything is written into the run folder
        cuda = [runtime.device] if runtime.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the run seeds torch's generators; the caller's are restored
            return run(dataset, out, config, runtime, resume=resume,
                       verbose=verbose and runtime.is_main)
    finally:
        teardown_runtime(runtime)


def run(dataset: Path, out: Path, config: TrainConfig, runtime: Runtime, *, resume: bool, verbose: bool) -> dict:
    # ---- data: the patient-wise split, held on the device
    data = load_dataset(dataset)
    check_depth_fits(config.depth, data.images.shape[-2:])
    train_idx, val_idx, train_patients, val_patients = choose_indices(data, config)
    train_set = split_tensors(data, train_idx, config, runtime.device)
    val_set = split_tensors(data, val_idx, config, runtime.device)
    threshold = decision_threshold(data.mask_style)
    n_steps = steps_per_epoch(len(train_set), runtime, config.batch_size)
    config.resolved_tau = resolve_tau(config, train_set)
    config.data_hash, config.rvseg_version = data.meta["content_hash"], __version__
    config.resolved_val_patients = list(val_patients)
    if config.folds and config.val_patients and verbose:
        print(f"note: --folds {config.folds} --fold {config.fold} chooses the validation patients "
              f"({', '.join(val_patients)}); the configured --val-patients list is not used")
    for note in (partly_labelled_note(data, config, [*train_patients, *val_patients]), sgdr_mid_cycle_note(config)):
        if note and verbose:
            print(note)
    data_info = {"in_channels": int(data.images.shape[1]), "labels": config.target, "mask_style": data.mask_style,
                 "content_hash": data.meta["content_hash"], "prepare": data.meta["options"],
                 "train_patients": train_patients, "val_patients": val_patients,
                 "train_slices": slices_fingerprint(data, train_idx), "scale": data.scale(train_idx)}

    # ---- model, loss, optimisation
    torch.manual_seed(config.seed)
    model = config_model(config, data_info["in_channels"]).to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = config_loss(config, config.resolved_tau)
    optimizer = build_optimizer(model.parameters(), config, for_cuda_graph=config.cuda_graph)
    scheduler = build_scheduler(optimizer, config)
    scaler = runtime.grad_scaler()
    average = WeightAverage(model, config.ema) if config.ema else None
    evaluated = average.model if average else model  # the weights that are validated and saved as "model"
    augment = AugmentConfig(flip=True, rotate_deg=config.rotate_deg, scale=(config.scale_min, config.scale_max),
                            translate=config.translate, intensity=config.intensity, elastic=config.elastic) \
        if config.augment else None
    order_gen = torch.Generator().manual_seed(config.seed)  # identical on every rank: shards never overlap
    augment_gen = to_device_generator(config.seed * 1009 + runtime.rank + 1, runtime.device)

    # ---- where we start: fresh, or exactly where last.pt left off
    epoch, step, order, loss_sum = 0, 0, None, 0.0
    best = {"score": -1.0, "epoch": 0, "dice": []}
    earlier = {"seconds": 0.0, "epoch_seconds": 0.0, "trained_images": 0}  # of the sessions before this one
    if resume and (out / "last.pt").is_file():
        state = load_checkpoint(out / "last.pt")
        check_resumable(state, config, data_info, runtime, out)
        if config.epochs < state["epoch"]:
            raise ConfigError(f"--epochs {config.epochs} is below the {state['epoch']} epochs this run has done", out)
        model.load_state_dict(state.get("training_model", state["model"]))
        if average:
            average.model.load_state_dict(state["model"])
            average.updates = state["ema_updates"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if replan_schedule(scheduler, config.epochs) and verbose:
            print(f"the cosine schedule now spans {config.epochs} epochs: the learning rate continues from where "
                  f"that schedule is at epoch {state['epoch']}")
        scaler.load_state_dict(state["scaler"])
        order_gen.set_state(state["order_generator"])
        restore_rng(state, runtime.rank, augment_gen, runtime.device)
        epoch, step, order = state["epoch"], state["step"], state["order"]
        loss_sum, best = state["loss_sum"], state["best"]
        earlier.update({key: state[key] for key in earlier if key in state})  # absent before rvseg kept them
    elif resume and (out / "summary.json").is_file():
        raise ConfigError("the run in this folder is finished and its last.pt was removed (a sweep keeps only "
                          "best.pt), so it cannot be continued; train into another --out", out)
    elif resume and runtime.is_main and verbose:
        print(f"no checkpoint in {out}: starting from scratch")
    elif not resume and any((out / name).exists() for name in RUN_FILES):
        raise ConfigError("run folder already holds a run; use --resume (resume=True in Python) to continue it, or "
                          "choose another --out", out)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        # A pause belongs to this session: `rvseg train --config RUN/config.yaml` must run the whole run.
        replace(config, pause_after=None).save(out / "config.yaml")
    train_model = DistributedDataParallel(model) if runtime.distributed else model
    if config.compile:
        train_model = torch.compile(train_model)
    train_step = make_train_step(train_model, deep_supervision_loss(loss_fn, config.deep_supervision), optimizer,
                                 runtime, channels_last=runtime.channels_last,
                                 batch_size=config.batch_size, cuda_graph=config.cuda_graph, scaler=scaler)
    best_weights = None  # the best epoch's weights until the next checkpoint writes them (rank 0)
    # The training time the latest last.pt of this session records (rank 0); the summary reports it, so
    # that resuming a finished run (which adds only its set-up) never reports less time than the run took.
    saved_seconds = None

    def save_model(name: str, weights: dict, epoch_: int, dice: list[float]) -> None:
        """A checkpoint of validated weights alone (best.pt, snapshot-EEEE.pt): what evaluate and predict load."""
        save_checkpoint(out / name, {"model": weights, "config": config.to_dict(), "data": data_info,
                                     "epoch": epoch_, "dice": dice})

    def save_best() -> None:
        nonlocal best_weights
        save_model("best.pt", best_weights, best["epoch"], best["dice"])
        best_weights = None

    def checkpoint(epoch_: int, step_: int, order_, loss_sum_: float) -> None:
        nonlocal saved_seconds
        # Every rank's random state, so that a resumed run continues each rank's streams exactly.
        states = gather_objects(rng_state(augment_gen, runtime.device), runtime)
        if not runtime.is_main:
            return
        if best_weights is not None:
            # best.pt before last.pt: a crash between the two writes then leaves a last.pt whose record of
            # the best epoch is no newer than best.pt, and the resumed run finds that epoch again.
            save_best()
        weights = {"model": evaluated.state_dict()}
        if average:  # "model" is the average: what the run validated, and what evaluate and predict load
            weights.update(training_model=model.state_dict(), ema_updates=average.updates)
        saved_seconds = training_seconds()
        save_checkpoint(out / "last.pt", {
            **weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "order_generator": order_gen.get_state(),
            "augment_generators": [s["augment"] for s in states],
            "torch_rng": [{k: v for k, v in s.items() if k != "augment"} for s in states],
            "epoch": epoch_, "step": step_, "order": order_, "loss_sum": loss_sum_, "best": best,
            "seconds": saved_seconds, "epoch_seconds": time.perf_counter() - epoch_started if step_ else 0.0,
            "trained_images": earlier["trained_images"] + trained_images,
            "config": config.to_dict(), "data": data_info})

    def training_seconds() -> float:
        """Training time of the run so far, over every session (the time after its last checkpoint
        of an interrupted session is lost with the work it did)."""
        return earlier["seconds"] + time.perf_counter() - started

    def diverged(what: str, value: float) -> TrainingDiverged:
        # The best weights not yet written are still good: keep them too.
        if runtime.is_main and best_weights is not None:
            save_best()
        kept = [name for name in RUN_CHECKPOINTS if (out / name).is_file()]
        outcome = f"{' and '.join(kept)} (from before) kept" if kept else "no checkpoint was written"
        return TrainingDiverged(f"the {what} loss became {value} in epoch {epoch + 1}; {outcome} (try a lower --lr)",
                                out)

    metrics = MetricsLog(out / "metrics.csv", resume_until_epoch=epoch if resume else None)
    progress = ProgressLine(config.epochs, epoch, enabled=verbose)
    if verbose:
        print(f"training {config.arch} ({count_parameters(model):,} parameters) on {len(train_set)} slices of "
              f"{len(train_patients)} patients, validating on {len(val_set)} slices of {val_patients}; "
              f"{runtime.device}, {runtime.precision}, {runtime.world_size} process(es)")
    started, last_save_cost, last_save_at, last_plot_at = time.perf_counter(), 0.0, time.perf_counter(), 0.0
    trained_images = 0

    # ---- the loop
    with StopRequest() as stop:
        epoch_started = time.perf_counter() - earlier["epoch_seconds"]  # an interrupted epoch's time so far
        while epoch < config.epochs:
            if step == 0:
                epoch_started = time.perf_counter()
                order, loss_sum = epoch_order(train_set, config, order_gen), 0.0
            shard = order[runtime.rank::runtime.world_size][: n_steps * config.batch_size]
            shard = shard.to(train_set.images.device)
            running = torch.zeros((), device=runtime.device)
            while step < n_steps:
                index = shard[step * config.batch_size:(step + 1) * config.batch_size]
                if augment is None:
                    images, targets, _ = train_set.batch(index, runtime.device)
                else:
                    images, targets = train_set.augmented_batch(index, runtime.device, augment, augment_gen)
                running += train_step(images, targets)
                if average:
                    average.update()
                step += 1
                trained_images += len(images)
                if any_rank(stop.requested, runtime):
                    partial = mean_over_ranks(loss_sum + float(running), runtime)
                    if any_rank(not (math.isfinite(partial) and finite_weights(model)), runtime):
                        raise diverged("training", partial)
                    checkpoint(epoch, step, order, partial)
                    if verbose:
                        print(f"\ninterrupted: saved {out / 'last.pt'} (epoch {epoch + 1}, step {step}); "
                              f"continue with --resume")
                    raise KeyboardInterrupt
            loss_sum += float(running)
            train_loss = float(all_reduce_sum(torch.tensor([loss_sum / n_steps], device=runtime.device),
                                              runtime)) / runtime.world_size
            if not math.isfinite(train_loss):
                raise diverged("training", train_loss)
            lr = float(optimizer.param_groups[0]["lr"])  # a device tensor under --cuda-graph
            scheduler.step()
            val_loss, val_dice = validate(evaluated, val_set, loss_fn, runtime, config.batch_size, threshold)
            if not math.isfinite(val_loss):  # the epoch's last update broke the weights
                raise diverged("validation", val_loss)
            epoch, step = epoch + 1, 0
            row = {"epoch": epoch, "train_loss": f"{train_loss:.6f}", "val_loss": f"{val_loss:.6f}",
                   **{f"val_dice_{label}": f"{d:.6f}" for label, d in zip(config.target, val_dice, strict=True)}}
            if average:  # the trained weights too: one run then shows what the average gains
                _, trained_dice = validate(model, val_set, loss_fn, runtime, config.batch_size, threshold)
                row.update({f"trained_val_dice_{label}": f"{d:.6f}"
                            for label, d in zip(config.target, trained_dice, strict=True)})
            row.update(lr=f"{lr:.6g}", seconds=f"{time.perf_counter() - epoch_started:.3f}")
            score = float(np.mean(val_dice))
            if score > best["score"]:
                best = {"score": score, "epoch": epoch, "dice": val_dice}
                if runtime.is_main:
                    best_weights = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
            if runtime.is_main:
                metrics.append(row)
                if config.snapshots and is_sgdr_cycle_end(config.sgdr_t0, epoch):
                    save_model(snapshot_name(epoch), evaluated.state_dict(), epoch, val_dice)
            final = epoch == config.epochs or epoch == config.pause_after
            if runtime.is_main and (final or time.perf_counter() - last_plot_at > PLOT_INTERVAL_S):
                draw_progress(metrics.rows, out / "progress.png")
                last_plot_at = time.perf_counter()
            due = time.perf_counter() - last_save_at > last_save_cost / CHECKPOINT_OVERHEAD
            if any_rank(final or due, runtime):
                save_started = time.perf_counter()
                checkpoint(epoch, 0, None, 0.0)
                last_save_at = time.perf_counter()
                last_save_cost = last_save_at - save_started
            dice_text = " ".join(f"{label} {d:.3f}" for label, d in zip(config.target, val_dice, strict=True))
            progress.update(epoch, f"loss {train_loss:.4f}/{val_loss:.4f} dice {dice_text}")
            if epoch == config.pause_after and epoch < config.epochs:
                if verbose:
                    print(f"paused after epoch {epoch}; continue with --resume")
                return {"paused_at_epoch": epoch}
    progress.close()

    seconds = saved_seconds if saved_seconds is not None else training_seconds()  # rank 0 saves
    images = earlier["trained_images"] + trained_images
    summary = {
        "best_epoch": best["epoch"], "best_val_dice": dict(zip(config.target, best["dice"], strict=True)),
        "final": numeric_row(metrics.rows[-1]) if metrics.rows else {}, "epochs": config.epochs,
        "seconds": round(seconds, 2),
        "train_images_per_second": round(images * runtime.world_size / seconds, 1) if seconds > 0 else None,
        "n_train": len(train_set), "n_val": len(val_set), "train_patients": train_patients,
        "val_patients": val_patients, "device": str(runtime.device), "precision": runtime.precision,
        "world_size": runtime.world_size, "resolved_tau": config.resolved_tau,
        "snapshots": kept_snapshots(out, config),
    }
    if runtime.is_main:
        write_json(out / "summary.json", summary)
        if verbose:
            per_label = ", ".join(f"{label} {dice:.4f}" for label, dice in summary["best_val_dice"].items())
            mean = f"{best['score']:.4f} ({per_label})" if len(config.target) > 1 else per_label
            print(f"best val Dice {mean} at epoch {best['epoch']}; run folder {out}")
    return summary
