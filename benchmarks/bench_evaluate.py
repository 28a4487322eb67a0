"""Time evaluation metrics on the 243 RVSC slices and prediction latency on the CPU; prints JSON.

- ``metrics``: :func:`rvseg.evaluate.case_rows` (crop, Dice, Jaccard, sensitivity, precision,
  Hausdorff distance, HD95, areas) for the 243 slices of the shared ``rvsc-train-png`` set at its own
  128 x 108, the endo reference against an imperfect prediction (the reference dilated by one pixel
  and shifted by one row and column), so boundaries and distances have realistic lengths. The issue's
  target is under 2 s on 2 CPU cores.
- ``predict``: :meth:`rvseg.inference.Predictor.predict` (normalise, resize, network, mapping back,
  largest region) on the DICOMs of the shared RVSC patient 9 (256 x 216): one slice (batch of one),
  and the 20-frame cine of its first slice location (batches of ``--batch-size``). The network is
  the paper's U-Net (``--width 64 --depth 4``) with random weights, which cost the same time as
  trained ones, unless ``--checkpoint`` names a trained one.

Not a test: run it by hand, ``.venv/bin/python benchmarks/bench_evaluate.py [--size 128 112]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_dilation

from rvseg.data.dataset import load_dataset
from rvseg.data.dicom import order_series, read_dicom
from rvseg.data.prepare import PrepareOptions, prepare
from rvseg.evaluate import case_rows
from rvseg.inference import Predictor
from rvseg.models import build_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SERIES_FRAMES = 20


def timed(function, repeats: int) -> dict:
    """Best and median wall seconds of ``repeats`` calls after one untimed warm-up call."""
    function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return {"best_s": round(min(seconds), 4), "median_s": round(statistics.median(seconds), 4), "repeats": repeats}


def bench_metrics(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        prepare(SHARED_DATA / "rvsc-train-png", Path(folder) / "rvsc", PrepareOptions())
        data = load_dataset(Path(folder) / "rvsc")
    indices = list(range(len(data)))
    predictions = []
    for index in indices:
        height, width = int(data.rows[index]["height"]), int(data.rows[index]["width"])
        reference = data.masks[index, :1, :height, :width] > 0
        predictions.append(np.roll(binary_dilation(reference[0]), (1, 1), axis=(0, 1))[None])
    result = timed(lambda: case_rows(data, indices, predictions, ["endo"], [0]), repeats)
    return {"slices": len(indices), "shape": [int(s) for s in data.images.shape[-2:]], **result,
            "target_s": 2.0}


def bench_predict(args) -> dict:
    frames = order_series(read_dicom(path) for path in
                          sorted((SHARED_DATA / "rvsc-native" / "patient09" / "P09dicom").glob("*.dcm")))
    series = [frame.pixels for frame in frames if frame.slice_location == frames[0].slice_location][:SERIES_FRAMES]
    if args.checkpoint:
        predictor = Predictor.from_checkpoints([args.checkpoint], batch_size=args.batch_size, device="cpu")
        model = {"checkpoint": str(args.checkpoint)}
    else:
        torch.manual_seed(0)
        network = build_model("unet", width=args.width, depth=args.depth)
        prepare_options = {"size": args.size, "channels": 1, "normalize": "percentile", "clahe": False}
        predictor = Predictor(models=[network], labels=["endo"], prepare=prepare_options, batch_size=args.batch_size)
        model = {"arch": "unet", "width": args.width, "depth": args.depth, "input_size": args.size or "native"}
    return {
        "model": model,
        "image_shape": list(series[0].shape),
        "batch_size": args.batch_size,
        "per_slice": timed(lambda: predictor.predict(series[:1]), args.repeats),
        "per_series": {"frames": len(series), **timed(lambda: predictor.predict(series), args.repeats)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=64, help="U-Net width (the paper: 64)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="model input size (default: native)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--checkpoint", help="a trained checkpoint or run folder instead of a random U-Net")
    parser.add_argument("--parts", default="metrics,predict", help="metrics and/or predict")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"the shared data folder {SHARED_DATA} is missing")
    parts = {part.strip() for part in args.parts.split(",")}
    result = {"torch_threads": torch.get_num_threads(), "device": "cpu"}
    if "metrics" in parts:
        result["metrics"] = bench_metrics(args.repeats)
    if "predict" in parts:
        with torch.inference_mode():
            result["predict"] = bench_predict(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
