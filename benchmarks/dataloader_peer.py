"""The conventional PyTorch pipeline that ``rvseg train`` is measured against (the speed issue's peer).

A ``Dataset`` whose ``__getitem__`` augments one slice at a time on the CPU with SciPy (random
rotation in +/-180 degrees, bilinear for the image and nearest for the mask, and random flips), a
``DataLoader`` with N worker processes, pinned memory and non-blocking copies to the device, then
the very training step of ``rvseg bench`` (same model, loss, optimizer, precision, memory
format; :func:`rvseg.bench.build_step`). This is how most segmentation code feeds a GPU, and why
it starves one: the workers cannot rotate images as fast as the model consumes them.

Throughput is the median over ``--repeats`` timed runs of ``--steps`` steps, after ``--warmup``
steps that also start the workers. The result is JSON (printed, and written with ``--out``)::

    python benchmarks/dataloader_peer.py --device cuda --size 256 208 --workers 8 --dataset PREPARED

Without ``--dataset`` the slices are synthetic (a bright disk with its mask on noise): the cost of
the pipeline does not depend on what the images show.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from rvseg import __version__
from rvseg.bench import BenchOptions, build_step, device_info, synchronizer, time_repeats
from rvseg.errors import ConfigError, RvsegError
from rvseg.io import write_json
from rvseg.train.runtime import Runtime, setup_runtime

#: Rotation range of the peer's augmentation, as in ``rvseg train`` (degrees).
ROTATE_DEG = 180.0


class AugmentedSlices(Dataset):
    """Slices augmented one at a time on the CPU, as a conventional pipeline does it.

    Args:
        images: float32 (N, C, H, W).
        masks: float32 (N, 1, H, W), 0/1.

    Each item is ``(image, mask)``: float32 tensors (C, H, W) and (1, H, W), rotated by an angle
    drawn uniformly in +/-``ROTATE_DEG`` (image bilinear, mask nearest, zero outside) and flipped
    along each axis with probability 0.5. Every worker process draws from its own NumPy generator,
    seeded from the worker's torch seed.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        self.images, self.masks = images, masks
        self.rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rng is None:  # created in the worker, after fork, so workers draw different angles
            self.rng = np.random.default_rng(torch.initial_seed())
        angle = self.rng.uniform(-ROTATE_DEG, ROTATE_DEG)
        image = ndimage.rotate(self.images[index], angle, axes=(1, 2), reshape=False, order=1, mode="constant")
        mask = ndimage.rotate(self.masks[index], angle, axes=(1, 2), reshape=False, order=0, mode="constant")
        for axis in (1, 2):
            if self.rng.random() < 0.5:
                image, mask = np.flip(image, axis), np.flip(mask, axis)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(mask))


def synthetic_slices(n: int, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy images (N, 1, H, W) with a bright disk each, and the disks as masks (N, 1, H, W)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: size[0], : size[1]]
    centres = rng.uniform(0.3, 0.7, size=(n, 2)) * np.array(size)
    radii = rng.uniform(0.05, 0.15, size=n) * min(size)
    masks = ((rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2
             < radii[:, None, None] ** 2).astype(np.float32)[:, None]
    images = (0.3 + 0.5 * masks + rng.normal(0, 0.1, masks.shape)).astype(np.float32)
    return images, masks


def dataset_slices(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and first-label masks of a prepared data set, as float32 arrays."""
    from rvseg.data.dataset import load_dataset

    data = load_dataset(path)
    return data.images, data.masks[:, :1].astype(np.float32)


def endless(loader: DataLoader):
    """Batches of ``loader`` epoch after epoch (persistent workers are not restarted)."""
    while True:
        yield from loader


def measure_peer(options: BenchOptions, runtime: Runtime, workers: int, images: np.ndarray, masks: np.ndarray) -> dict:
    """Training throughput of the conventional pipeline, in images/s (median of the repeats).

    Args:
        options: resolved bench options (:meth:`BenchOptions.resolved`); the size is the images'.
        runtime: device and precision.
        workers: DataLoader worker processes (0 = load in the training process).
        images: float32 (N, C, H, W), N >= batch size.
        masks: float32 (N, 1, H, W).
    """
    if len(images) < options.batch_size:
        raise ConfigError(f"the peer needs at least one full batch: {len(images)} slices < batch size "
                          f"{options.batch_size}")
    cuda = runtime.device.type == "cuda"
    loader = DataLoader(AugmentedSlices(images, masks), batch_size=options.batch_size, shuffle=True,
                        num_workers=workers, pin_memory=cuda, drop_last=True, persistent_workers=workers > 0)
    batches = endless(loader)
    step = build_step(options, runtime, in_channels=images.shape[1])

    def train_steps(count: int) -> None:
        for _ in range(count):
            batch_images, batch_masks = next(batches)
            step(batch_images.to(runtime.device, non_blocking=cuda), batch_masks.to(runtime.device, non_blocking=cuda))

    synchronize = synchronizer(runtime.device)
    time_repeats(lambda: train_steps(options.warmup), 1, synchronize)
    seconds = time_repeats(lambda: train_steps(options.steps), options.repeats, synchronize)
    rates = [options.steps * options.batch_size / s for s in seconds]
    settings = {**asdict(options), "size": list(images.shape[2:]), "parts": ["peer"], "dataset": None,
                "workers": workers, "n_slices": len(images)}
    return {"rvseg_version": __version__, "torch_version": torch.__version__,
            "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": device_info(runtime.device), "settings": settings,
            "peer": {"images_per_s": statistics.median(rates),
                     "step_ms": 1000 * statistics.median(seconds) / options.steps,
                     "repeats_images_per_s": rates, "workers": workers,
                     "pipeline": "Dataset + DataLoader, per-sample scipy.ndimage.rotate and flips on CPU workers"}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image size (without --dataset)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--width", type=int)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--dataset", help="prepared data set (default: synthetic slices)")
    parser.add_argument("--samples", type=int, default=256, help="synthetic slices (without --dataset)")
    parser.add_argument("--out", help="also write the JSON result here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = BenchOptions(device=args.device, size=tuple(args.size) if args.size else None,
                           batch_size=args.batch_size, arch=args.arch, width=args.width, depth=args.depth,
                           precision=args.precision, channels_last=args.channels_last, steps=args.steps,
                           repeats=args.repeats, warmup=args.warmup)
    try:
        options.validate()
        runtime = setup_runtime(options.device, options.precision)
        options = options.resolved(runtime)
        if args.dataset:
            images, masks = dataset_slices(Path(args.dataset))
        else:
            images, masks = synthetic_slices(args.samples, options.size)
        result = measure_peer(options, runtime, args.workers, images, masks)
        result["settings"]["dataset"] = args.dataset or f"synthetic ({args.samples} slices)"
    except RvsegError as exc:
        print(f"dataloader_peer: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
