"""Compare post-processing rules on one trained run's validation predictions (issue 7's finding).

    python benchmarks/compare_postprocessing.py RUN DATASET [--label endo]

The same probabilities (one forward pass per slice, no TTA) are turned into masks by each rule and
scored with per-image Dice against the prepared masks, overall and per ED/ES phase:

- ``raw``: ``score > 0.5``;
- ``largest``: the largest 8-connected region by pixel count, holes filled (rvseg's default);
- ``mass``: the region with the largest summed probability, holes filled;
- ``share-0.5``: every region of at least half the largest one's size, holes filled.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from scipy import ndimage

from rvseg.data.dataset import load_dataset
from rvseg.inference import Predictor, prepared_inputs, single_region
from rvseg.metrics import dice_per_image
from rvseg.train.checkpoint import find_checkpoint, load_checkpoint

EIGHT_CONNECTED = np.ones((3, 3), bool)


def regions(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    labelled, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return labelled, list(range(1, count + 1))


def by_mass(mask: np.ndarray, score: np.ndarray) -> np.ndarray:
    labelled, ids = regions(mask)
    if not ids:
        return mask
    masses = ndimage.sum(score, labelled, ids)
    return ndimage.binary_fill_holes(labelled == ids[int(np.argmax(masses))])


def by_share(mask: np.ndarray, share: float) -> np.ndarray:
    labelled, ids = regions(mask)
    if not ids:
        return mask
    sizes = np.asarray(ndimage.sum(mask, labelled, ids))
    return ndimage.binary_fill_holes(np.isin(labelled, [i for i, s in zip(ids, sizes, strict=True)
                                                        if s >= share * sizes.max()]))


RULES = {
    "raw": lambda mask, score: mask,
    "largest": lambda mask, score: single_region(mask),
    "mass": by_mass,
    "share-0.5": lambda mask, score: by_share(mask, 0.5),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("dataset")
    parser.add_argument("--label", default="endo")
    args = parser.parse_args(argv)
    predictor = Predictor.from_checkpoints([args.run])
    data = load_dataset(args.dataset)
    val_patients = set(load_checkpoint(find_checkpoint(args.run))["data"]["val_patients"])
    indices = [i for i, row in enumerate(data.rows) if row["patient"] in val_patients]
    label = data.label_indices([args.label])[0]
    channel = predictor.labels.index(args.label)
    inputs = prepared_inputs(predictor, data, indices)
    scores = [s[channel] for s in predictor.score_maps(inputs, [None] * len(inputs))]
    references = np.stack([data.masks[i, label].astype(bool) for i in indices])
    phases = np.array([data.rows[i]["phase"] for i in indices])
    print(f"{args.run}: {len(indices)} validation slices of {sorted(val_patients)}, label {args.label}")
    for name, rule in RULES.items():
        masks = np.stack([rule(score > 0.5, score) for score in scores])
        dice = dice_per_image(torch.from_numpy(masks[:, None]), torch.from_numpy(references[:, None]))[:, 0].numpy()
        per_phase = "  ".join(f"{phase} {dice[phases == phase].mean():.4f}" for phase in ("ED", "ES")
                              if (phases == phase).any())
        print(f"  {name:10s} {dice.mean():.4f}  {per_phase}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
