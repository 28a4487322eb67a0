"""``rvseg bench``: how fast this machine trains, evaluates and predicts, against the model's own limit.

Five measurements (``parts``), each the median of ``repeats`` timed repeats after a warm-up:

- ``raw``: one training step of the model alone (forward, loss, backward, optimizer step) on random
  tensors already on the device, in images/s. Nothing can train faster than this: it is the limit.
- ``loop``: the real :func:`rvseg.train.loop.train` on a prepared data set, with augmentation and
  validation, in training images per second of epoch time. Epoch times come from the run's own
  ``metrics.csv``; the first epoch (start-up, allocator and kernel warm-up, compilation) is
  dropped, so the run has ``1 + repeats`` epochs.
- ``loop-noaug``: the same with ``augment=False``, which separates the cost of augmentation from
  that of the rest of the loop (as nnU-Net's benchmark trainers do).
- ``eval``: :func:`rvseg.metrics.batch_metrics` (Dice ... HD, HD95) over every slice of the data
  set, against a copy of the reference shifted by 2 pixels, in slices/s.
- ``predict``: latency of :meth:`rvseg.inference.Predictor.predict` (what ``rvseg predict`` runs)
  for one native-size slice and for a 20-frame series: preprocessing as the data set was prepared,
  the forward pass, masks back at native size, post-processing.

``loop / raw`` says how much of the device the training loop keeps busy (the speed issue asks for
>= 0.9 on a GPU). The data set is the one given (``dataset``) or a synthetic phantom prepared at
``size`` in a temporary folder, sized so that one epoch has about ``steps`` training batches.

Peak memory is CUDA's max allocated memory per part on a GPU; on the CPU it is the process's max
resident set size (``resource``), which only grows, so each part reports the peak so far.
"""

from __future__ import annotations

import math
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from rvseg import __version__
from rvseg.checks import check_choice
from rvseg.errors import ConfigError, RvsegError
from rvseg.models import build_model
from rvseg.train.config import TrainConfig, check_graph_or_compile
from rvseg.train.loop import config_loss, config_model
from rvseg.train.optim import build_optimizer
from rvseg.train.progress import read_metrics
from rvseg.train.runtime import Runtime, setup_runtime
from rvseg.train.step import Step, check_cuda_graph, make_train_step

#: Measurements in the order they run; the names used by ``--parts`` and as keys of the result.
PARTS = ("raw", "loop", "loop-noaug", "eval", "predict")
#: ``torch.compile`` modes offered; ``reduce-overhead`` replays CUDA graphs (for launch-bound steps).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
#: Defaults that depend on the device: the paper's U-Net and image size on a GPU, a model and size
#: that a 2-core CPU measures in about a minute. One warm-up call suffices on the CPU (it builds the
#: kernels of each new shape); a GPU also settles its allocator and kernel choices over a few steps.
DEVICE_DEFAULTS = {
    "cuda": {"size": (256, 208), "width": 64, "steps": 30, "repeats": 5, "warmup": 5},
    "cpu": {"size": (128, 112), "width": 16, "steps": 5, "repeats": 3, "warmup": 1},
}
#: Frames of the series whose prediction latency is measured (a cine stack has about 20).
SERIES_FRAMES = 20
#: Shift (pixels) between reference and "prediction" in the evaluation part: both masks keep
#: realistic boundaries, so the distance transforms do their real amount of work.
EVAL_SHIFT_PX = 2
#: Most timed predictions per repeat (the CPU preprocessing of a series dominates; a few suffice).
PREDICT_CALLS = 5
#: Share of positive pixels in the random targets of the raw step (about an RV cavity's share).
RAW_FOREGROUND = 0.1
#: Slices per phantom patient (about 11 of its 12 ED/ES images carry an RV contour).
PHANTOM_SLICES = 6


@dataclass
class BenchOptions:
    """What ``rvseg bench`` measures and how; ``None`` means the device default (:data:`DEVICE_DEFAULTS`).

    Attributes:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        size: (H, W) of the images; with ``dataset``, the data set's array size (a different
            value is an error).
        batch_size: images per training step (and per validation batch in the loop).
        arch, width, depth: the model (see :func:`rvseg.models.build_model`).
        loss: training loss (see :func:`rvseg.losses.build_loss`; ``switching`` needs the loop's
            resolved tau and is not offered here).
        precision: ``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16``, ``fp16`` or ``fp32``.
        channels_last: channels-last memory format in the raw step and prediction; ``None`` = as
            the training loop does (on for CUDA). The loop itself always follows its runtime.
        compile: ``torch.compile`` the model (raw step and loop).
        compile_mode: the raw step's ``torch.compile`` mode (the loop uses ``default``).
        cuda_graph: capture the whole training step (forward, backward, optimizer) as one CUDA
            graph and replay it, in the raw step and the loop (``rvseg train --cuda-graph``; CUDA
            only, bf16 or fp32).
        cudnn_benchmark: set ``torch.backends.cudnn.benchmark`` for every part.
        steps: timed training steps per repeat of the raw step; also sizes the phantom so that an
            epoch has about this many batches.
        repeats: timed repeats; every figure is their median.
        warmup: untimed steps (calls) before the timed repeats.
        parts: which of :data:`PARTS` to run.
        dataset: a prepared data set for the loop, eval and predict parts; None = a phantom.
    """

    device: str = "auto"
    size: tuple[int, int] | None = None
    batch_size: int = 16
    arch: str = "unet"
    width: int | None = None
    depth: int = 4
    loss: str = "dice"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: str = "default"
    cuda_graph: bool = False
    cudnn_benchmark: bool = False
    steps: int | None = None
    repeats: int | None = None
    warmup: int | None = None
    parts: tuple[str, ...] = PARTS
    dataset: Path | None = None

    def validate(self) -> None:
        unknown = [part for part in self.parts if part not in PARTS]
        if unknown or not self.parts:
            raise ConfigError(f"--parts takes a comma-separated subset of {','.join(PARTS)}, "
                              f"not {','.join(self.parts)}")
        check_choice(self.compile_mode, COMPILE_MODES, "--compile-mode")
        check_graph_or_compile(self.cuda_graph, self.compile)
        if self.loss == "switching":
            raise ConfigError("--loss switching needs the training split's tau; benchmark it with rvseg train")
        for name in ("batch_size", "steps", "repeats", "width", "depth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if self.warmup is not None and self.warmup < 0:
            raise ConfigError(f"--warmup must be at least 0, not {self.warmup}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 8):
            raise ConfigError(f"--size needs two values of at least 8 (H W), not {self.size}")

    def resolved(self, runtime: Runtime) -> BenchOptions:
        """A copy with every device default filled in and the precision resolved."""
        defaults = DEVICE_DEFAULTS["cuda" if runtime.device.type == "cuda" else "cpu"]
        filled = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        filled["size"] = tuple(self.size or defaults["size"])
        channels_last = runtime.channels_last if self.channels_last is None else self.channels_last
        return replace(self, **filled, precision=runtime.precision, channels_last=channels_last)


# ---------------------------------------------------------------- timing


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_repeats(run_once: Callable[[], None], repeats: int, synchronize: Callable[[], None]) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``run_once``, each bracketed by device syncs."""
    seconds = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        run_once()
        synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated memory since the last reset, or the process's max RSS on the CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1),
                "cuda": torch.version.cuda}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- the training step


def training_setup(options: BenchOptions, runtime: Runtime, in_channels: int = 1):
    """Model (on the device, train mode), loss and optimizer as the loop builds them (study defaults)."""
    config = TrainConfig(arch=options.arch, width=options.width, depth=options.depth, loss=options.loss)
    torch.manual_seed(config.seed)
    model = config_model(config, in_channels).to(runtime.device)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = config_loss(config, switch_tau=None)
    optimizer = build_optimizer(model.parameters(), config, for_cuda_graph=options.cuda_graph)
    return model, loss_fn, optimizer


def build_step(options: BenchOptions, runtime: Runtime, in_channels: int = 1) -> Step:
    """The training step the options ask for: eager, ``torch.compile``-d, or one CUDA graph."""
    model, loss_fn, optimizer = training_setup(options, runtime, in_channels)
    if options.compile:
        model = torch.compile(model, mode=options.compile_mode)
    return make_train_step(model, loss_fn, optimizer, runtime, channels_last=options.channels_last,
                           batch_size=options.batch_size, cuda_graph=options.cuda_graph,
                           mark_cudagraph_steps=options.compile and options.compile_mode == "reduce-overhead")


# ---------------------------------------------------------------- the parts


def measure_raw(options: BenchOptions, runtime: Runtime, in_channels: int = 1) -> dict:
    """Training-step throughput of the model alone on random device tensors (the limit)."""
    generator = torch.Generator().manual_seed(0)
    shape = (options.batch_size, in_channels, *options.size)
    images = torch.randn(shape, generator=generator).to(runtime.device)
    targets = (torch.rand((options.batch_size, 1, *options.size), generator=generator) < RAW_FOREGROUND)
    targets = targets.float().to(runtime.device)
    step = build_step(options, runtime, in_channels)
    synchronize = synchronizer(runtime.device)
    time_repeats(lambda: [step(images, targets) for _ in range(options.warmup)], 1, synchronize)
    seconds = time_repeats(lambda: [step(images, targets) for _ in range(options.steps)], options.repeats,
                           synchronize)
    rates = [options.steps * options.batch_size / s for s in seconds]
    return {"images_per_s": statistics.median(rates), "step_ms": 1000 * statistics.median(seconds) / options.steps,
            "repeats_images_per_s": rates}


def measure_loop(dataset: Path, options: BenchOptions, run_dir: Path, *, augment: bool) -> dict:
    """Throughput of :func:`rvseg.train.loop.train` from the epoch times in its ``metrics.csv``."""
    from rvseg.train.loop import train

    config = TrainConfig(arch=options.arch, width=options.width, depth=options.depth, loss=options.loss,
                         batch_size=options.batch_size, epochs=1 + options.repeats, augment=augment,
                         device=options.device, precision=options.precision, compile=options.compile,
                         cuda_graph=options.cuda_graph)
    summary = train(dataset, run_dir, config, verbose=False)
    epoch_seconds = [row["seconds"] for row in read_metrics(run_dir)]
    timed = epoch_seconds[1:]  # the first epoch carries the start-up
    n_train = int(summary["n_train"])
    return {"images_per_s": n_train / statistics.median(timed), "epoch_seconds": epoch_seconds,
            "n_train": n_train, "n_val": int(summary["n_val"]), "epochs": config.epochs,
            "steps_per_epoch": math.ceil(n_train / options.batch_size), "augment": augment,
            "compile": options.compile, "cuda_graph": options.cuda_graph,
            "includes": "training steps and validation of each epoch"}


def measure_eval(dataset: Path, options: BenchOptions) -> dict:
    """Slices per second of :func:`rvseg.metrics.batch_metrics` (every metric, HD and HD95 included)."""
    from rvseg.data.dataset import load_dataset
    from rvseg.metrics import batch_metrics

    data = load_dataset(dataset)
    label = data.labels[0]
    channel = data.label_indices([label])[0]
    have = np.flatnonzero(data.present[:, channel])
    refs = data.masks[have, channel].astype(bool)
    preds = np.roll(refs, EVAL_SHIFT_PX, axis=2)
    spacings = [data.spacing(int(i)) for i in have]
    batch_metrics(preds[: options.warmup], refs[: options.warmup], spacings[: options.warmup])
    seconds = time_repeats(lambda: batch_metrics(preds, refs, spacings), options.repeats, lambda: None)
    return {"slices_per_s": len(refs) / statistics.median(seconds), "n_slices": int(len(refs)), "label": label,
            "seconds": seconds, "metrics": "dice, jaccard, sensitivity, precision, hd, hd95, areas"}


def measure_predict(dataset: Path, options: BenchOptions, runtime: Runtime) -> dict:
    """Latency of :meth:`rvseg.inference.Predictor.predict` for one slice and for a 20-frame series.

    The images are random, at the native size of the data set's first sample; the model is a
    fresh one of the bench's architecture (the weights do not change the work done).
    """
    from rvseg.data.dataset import load_dataset
    from rvseg.inference import Predictor

    data = load_dataset(dataset)
    row = data.rows[0]
    native = (int(row.get("orig_height") or data.images.shape[2]), int(row.get("orig_width") or data.images.shape[3]))
    frames = list(np.random.default_rng(0).uniform(0, 1000, size=(SERIES_FRAMES, *native)).astype(np.float32))
    model = build_model(options.arch, in_channels=int(data.images.shape[1]), out_channels=1,
                        width=options.width, depth=options.depth)
    predictor = Predictor(models=[model], labels=data.labels[:1], prepare=data.meta["options"],
                          mask_style=data.mask_style, batch_size=SERIES_FRAMES, device=runtime.device)
    def predictions(images: list[np.ndarray], count: int) -> Callable[[], None]:
        return lambda: [predictor.predict(images) for _ in range(count)]

    synchronize = synchronizer(runtime.device)
    calls = min(options.steps, PREDICT_CALLS)
    latency = {}
    for name, images in (("slice", frames[:1]), ("series", frames)):
        time_repeats(predictions(images, max(options.warmup, 1)), 1, synchronize)
        seconds = time_repeats(predictions(images, calls), options.repeats, synchronize)
        latency[f"{name}_ms"] = 1000 * statistics.median(seconds) / calls
    return {**latency, "series_frames": SERIES_FRAMES, "native_size": list(native),
            "model_size": list(predictor.input_size or native),
            "via": "rvseg.inference.Predictor.predict: preprocessing as prepared, forward (fp32, one model, no "
                   "TTA), masks back at native size, largest region"}


# ---------------------------------------------------------------- data and driver


def phantom_dataset(options: BenchOptions, work: Path) -> Path:
    """A synthetic phantom prepared at ``options.size``, with about ``steps`` training batches per epoch."""
    from rvseg.data.phantom import write_phantom
    from rvseg.data.prepare import PrepareOptions, prepare

    wanted_train = options.steps * options.batch_size
    per_patient = 2 * PHANTOM_SLICES  # an ED and an ES image per slice
    train_share = 1 - TrainConfig().val_fraction  # the loop's default split
    patients = min(99, max(3, math.ceil(wanted_train / (train_share * per_patient)) + 1))
    write_phantom(work / "phantom", patients=patients, slices=PHANTOM_SLICES, frames=2)
    prepare(work / "phantom", work / "prepared", PrepareOptions(size=tuple(options.size)))
    return work / "prepared"


def dataset_size(dataset: Path) -> tuple[tuple[int, int], int]:
    """(H, W) and channels of a prepared data set's arrays."""
    from rvseg.data.dataset import load_dataset

    shape = load_dataset(dataset).images.shape
    return (int(shape[2]), int(shape[3])), int(shape[1])


def run_bench(options: BenchOptions) -> dict:
    """Run the requested parts; see :func:`format_table` for a readable form of the result.

    Returns:
        ``{"rvseg_version", "torch_version", "date_utc", "device": {...}, "settings": {...},
        "<part>": {...} for each part that ran, "ratios": {"loop_over_raw", "loop-noaug_over_raw"},
        "peak_memory_mb", "memory", "errors": {part: message}}``. A part that fails is recorded in
        ``errors`` (its traceback goes to stderr) and the other parts still run.

    Raises:
        ConfigError: invalid options, or a ``size`` that differs from the data set's.
    """
    options.validate()
    runtime = setup_runtime(options.device, options.precision)
    if options.cuda_graph:
        check_cuda_graph(runtime)
    torch.backends.cudnn.benchmark = options.cudnn_benchmark
    in_channels = 1
    if options.dataset is not None:
        size, in_channels = dataset_size(Path(options.dataset))
        if options.size is not None and tuple(options.size) != size:
            raise ConfigError(f"--size {options.size[0]} {options.size[1]} differs from the data set's "
                              f"{size[0]} x {size[1]}; leave --size out with --dataset", options.dataset)
        options = replace(options, size=size)
    options = options.resolved(runtime)
    result: dict = {"rvseg_version": __version__, "torch_version": torch.__version__,
                    "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                    "device": device_info(runtime.device), "settings": settings_record(options, runtime)}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="rvseg-bench-") as tmp:
        work = Path(tmp)
        prepared: list[Path] = [Path(options.dataset)] if options.dataset is not None else []

        def dataset() -> Path:
            if not prepared:
                prepared.append(phantom_dataset(options, work))
            return prepared[0]

        measures = {
            "raw": lambda: measure_raw(options, runtime, in_channels),
            "loop": lambda: measure_loop(dataset(), options, work / "loop", augment=True),
            "loop-noaug": lambda: measure_loop(dataset(), options, work / "loop-noaug", augment=False),
            "eval": lambda: measure_eval(dataset(), options),
            "predict": lambda: measure_predict(dataset(), options, runtime),
        }
        for part in options.parts:
            reset_peak_memory(runtime.device)
            try:
                measured = measures[part]()
            except RvsegError:  # the user's mistake (a bad data set...): one clear message, as everywhere
                raise
            except Exception as exc:  # one failing part (e.g. a capture the GPU refuses) must not lose the rest
                errors[part] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
                continue
            result[part] = {**measured, "peak_memory_mb": round(peak_memory_mb(runtime.device), 1)}
    result["ratios"] = {f"{loop}_over_raw": result[loop]["images_per_s"] / result["raw"]["images_per_s"]
                        for loop in ("loop", "loop-noaug") if loop in result and "raw" in result}
    peaks = [result[part]["peak_memory_mb"] for part in PARTS if part in result]
    result["peak_memory_mb"] = max(peaks) if peaks else None
    result["memory"] = "CUDA max allocated" if runtime.device.type == "cuda" else "process max RSS"
    result["errors"] = errors
    return result


def settings_record(options: BenchOptions, runtime: Runtime) -> dict:
    record = asdict(options)
    record.update(size=list(options.size), parts=list(options.parts),
                  dataset=str(options.dataset) if options.dataset is not None else "phantom (synthetic)",
                  loop_channels_last=runtime.channels_last)
    return record


def format_table(result: dict) -> str:
    """The result as a short human-readable table."""
    device, s = result["device"], result["settings"]
    where = f"{device['name']}" + (f" ({device['threads']} threads)" if "threads" in device else "")
    lines = [
        f"rvseg bench: rvseg {result['rvseg_version']}, torch {result['torch_version']}, {device['type']} "
        f"{where}, {result['date_utc']}",
        f"{s['arch']} width {s['width']} depth {s['depth']}, {s['size'][0]} x {s['size'][1]}, batch "
        f"{s['batch_size']}, {s['precision']}, channels_last {on_off(s['channels_last'])}, compile "
        f"{s['compile_mode'] if s['compile'] else 'off'}, cuda graph {on_off(s['cuda_graph'])}; median of "
        f"{s['repeats']} x {s['steps']} steps",
    ]
    ratios = result.get("ratios", {})
    if "raw" in result:
        raw = result["raw"]
        lines.append(f"  raw training step     {raw['images_per_s']:10.1f} images/s  ({raw['step_ms']:.2f} ms per "
                     f"step; the limit)")
    for part, title in (("loop", "training loop       "), ("loop-noaug", "loop, no augment    ")):
        if part in result:
            loop = result[part]
            ratio = f"{ratios[f'{part}_over_raw']:.2f} x raw, " if f"{part}_over_raw" in ratios else ""
            lines.append(f"  {title}  {loop['images_per_s']:10.1f} images/s  ({ratio}{loop['n_train']} training "
                         f"+ {loop['n_val']} validation slices per epoch)")
    if "eval" in result:
        lines.append(f"  evaluation with HD    {result['eval']['slices_per_s']:10.1f} slices/s  "
                     f"({result['eval']['n_slices']} slices)")
    if "predict" in result:
        predict = result["predict"]
        lines.append(f"  prediction            {predict['slice_ms']:10.2f} ms per slice, {predict['series_ms']:.1f} ms "
                     f"per {predict['series_frames']}-frame series")
    if result.get("peak_memory_mb") is not None:
        lines.append(f"  peak memory           {result['peak_memory_mb']:10.1f} MiB ({result['memory']})")
    for part, message in result.get("errors", {}).items():
        lines.append(f"  FAILED {part}: {message}")
    return "\n".join(lines)


def on_off(flag: bool) -> str:
    return "on" if flag else "off"
