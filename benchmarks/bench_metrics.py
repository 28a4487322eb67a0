"""Time :func:`rvseg.metrics.batch_metrics` on a set the size of the RVSC training set.

243 slices of 128 x 108 pixels (the shared half-resolution RVSC set), each with a reference made
of one smooth blob covering about 5% of the image (the RV cavity's share) and a prediction that
is the reference shifted, grown or shrunk, and sometimes given a stray false-positive blob, so
that boundaries and distances are of realistic length. Prints slices/s and total seconds (best
and median of several repeats). Not a test: run it by hand,
``.venv/bin/python benchmarks/bench_metrics.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter

from rvseg.data.contours import largest_component
from rvseg.metrics import batch_metrics

SHAPE = (128, 108)
N_SLICES = 243
SPACING_MM = (1.4, 1.4)
FOREGROUND_SHARE = 0.05


def smooth_blob(rng: np.random.Generator, share: float) -> np.ndarray:
    """One connected blob covering about ``share`` of a SHAPE image (bool (H, W))."""
    field = gaussian_filter(rng.standard_normal(SHAPE), sigma=8)
    return largest_component(field > np.quantile(field, 1 - share))


def imperfect_prediction(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference shifted by up to 3 px, grown or shrunk by up to 2 px, maybe with a stray blob."""
    pred = np.roll(ref, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
    steps = int(rng.integers(-2, 3))
    if steps > 0:
        pred = binary_dilation(pred, iterations=steps)
    elif steps < 0:
        pred = binary_erosion(pred, iterations=-steps)
    if rng.random() < 0.3:
        pred |= smooth_blob(rng, 0.005)
    return pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    refs = [smooth_blob(rng, FOREGROUND_SHARE) for _ in range(N_SLICES)]
    preds = [imperfect_prediction(ref, rng) for ref in refs]

    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        rows = batch_metrics(preds, refs, SPACING_MM)
        seconds.append(time.perf_counter() - start)

    best, median = min(seconds), statistics.median(seconds)
    print(f"{N_SLICES} slices of {SHAPE[0]} x {SHAPE[1]}, {args.repeats} repeats")
    print(f"best:   {best:.3f} s total, {N_SLICES / best:.0f} slices/s")
    print(f"median: {median:.3f} s total, {N_SLICES / median:.0f} slices/s")
    dice = [row["dice"] for row in rows]
    hd = [row["hd"] for row in rows]
    print(f"(sanity: mean Dice {np.mean(dice):.3f}, mean HD {np.nanmean(hd):.1f} mm)")


if __name__ == "__main__":
    main()
