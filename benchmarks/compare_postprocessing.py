"""Compare post-processing rules on trained runs' validation predictions (issue 7).

    python benchmarks/compare_postprocessing.py DATASET RUN [RUN ...] [--label endo]

For each run, the same probabilities (one forward pass per slice, no TTA) are turned into masks by
each rule and scored with per-image Dice against the prepared masks, overall, per ED/ES phase and
per slice level (:func:`rvseg.evaluate.slice_levels`); with several runs, the mean over runs follows.

- ``raw``: ``score > 0.5`` (``--postprocess none``);
- ``largest``: the largest 8-connected region by pixel count, holes filled (``--postprocess largest``);
- ``stack``: one region per slice, chosen through the patient's stack at its phase
  (:mod:`rvseg.postprocess`; ``--postprocess stack``, rvseg's default);
- ``mass``: the region with the largest summed probability, holes filled;
- ``share-0.5``: every region of at least half the largest one's size, holes filled.

For the endocardium of a model that also segments the epicardium (``--target endo,epi``), two rules
use the epicardium kept by ``stack`` (the RV cavity lies inside the RV epicardium):

- ``in-epi``: the thresholded endo region overlapping that epicardium most (``stack``'s where none does);
- ``clip-epi``: ``stack``'s endo region cut to that epicardium (unchanged where they do not overlap).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from scipy import ndimage

from rvseg.data.dataset import load_dataset
from rvseg.evaluate import slice_levels, stack_keys
from rvseg.inference import Predictor, prepared_inputs
from rvseg.metrics import dice_per_image
from rvseg.postprocess import EIGHT_CONNECTED, postprocess_scores
from rvseg.train.checkpoint import find_checkpoint, load_checkpoint

GROUPS = ("ED", "ES", "base", "mid", "apex")


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


#: Rules of one image: (thresholded mask, score) -> mask.
PER_IMAGE_RULES = {
    "mass": by_mass,
    "share-0.5": lambda mask, score: by_share(mask, 0.5),
}
#: rvseg's own rules (``--postprocess``), which may see the whole stack.
RVSEG_RULES = {"raw": "none", "largest": "largest", "stack": "stack"}


def rule_masks(scores: list[np.ndarray], stacks: list, positions: list) -> dict[str, list[np.ndarray]]:
    """Rule name -> one bool (H, W) mask per score map (H, W) of one label."""
    masks = {name: [m[0] for m in postprocess_scores([s[None] for s in scores], rule, stacks, positions)]
             for name, rule in RVSEG_RULES.items()}
    for name, rule in PER_IMAGE_RULES.items():
        masks[name] = [rule(score > 0.5, score) for score in scores]
    return masks


def inside(mask: np.ndarray, container: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The region of ``mask`` overlapping ``container`` most, holes filled; ``fallback`` where none does."""
    labelled, ids = regions(mask)
    overlap = np.bincount(labelled[container], minlength=len(ids) + 1)[1:]
    if not ids or overlap.max() == 0:
        return fallback
    return ndimage.binary_fill_holes(labelled == 1 + int(np.argmax(overlap)))


def epi_rule_masks(endo: list[np.ndarray], epi: list[np.ndarray], stacks: list, positions: list,
                   stack_endo: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """``in-epi`` and ``clip-epi`` (module docstring) from the endo and epi score maps (H, W)."""
    kept_epi = [m[0] for m in postprocess_scores([s[None] for s in epi], "stack", stacks, positions)]
    return {"in-epi": [inside(score > 0.5, container, kept)
                       for score, container, kept in zip(endo, kept_epi, stack_endo, strict=True)],
            "clip-epi": [kept & container if (kept & container).any() else kept
                         for kept, container in zip(stack_endo, kept_epi, strict=True)]}


def compare(run: str, data, label_name: str) -> dict[str, dict[str, float]]:
    """Rule -> {"all", "ED", "ES", "base", "mid", "apex"} -> mean per-image Dice on the run's val patients."""
    predictor = Predictor.from_checkpoints([run])
    val_patients = set(load_checkpoint(find_checkpoint(run))["data"]["val_patients"])
    indices = [i for i, row in enumerate(data.rows) if row["patient"] in val_patients]
    label = data.label_indices([label_name])[0]
    channel = predictor.labels.index(label_name)
    inputs = prepared_inputs(predictor, data, indices)
    all_scores = list(predictor.score_maps(inputs, [None] * len(inputs)))
    scores = [s[channel] for s in all_scores]
    references = np.stack([data.masks[i, label].astype(bool) for i in indices])
    levels = slice_levels(data, indices, label)
    group_of = {"ED": np.array([data.rows[i]["phase"] == "ED" for i in indices]),
                "ES": np.array([data.rows[i]["phase"] == "ES" for i in indices])}
    group_of.update({level: np.array([levels[i] == level for i in indices]) for level in ("base", "mid", "apex")})
    keys = stack_keys(data, indices)
    rules = rule_masks(scores, *keys)
    if label_name == "endo" and "epi" in predictor.labels:
        epi = [s[predictor.labels.index("epi")] for s in all_scores]
        rules.update(epi_rule_masks(scores, epi, *keys, rules["stack"]))
    results = {}
    for name, masks in rules.items():
        predicted = torch.from_numpy(np.stack(masks)[:, None])
        dice = dice_per_image(predicted, torch.from_numpy(references[:, None]))[:, 0].numpy()
        results[name] = {"all": float(dice.mean()),
                         **{group: float(dice[chosen].mean()) for group, chosen in group_of.items() if chosen.any()}}
    return results


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    print(title)
    print(f"  {'rule':10s} {'all':>7s} " + " ".join(f"{group:>7s}" for group in GROUPS))
    for name, cells in results.items():
        print(f"  {name:10s} {cells['all']:7.4f} " + " ".join(f"{cells.get(group, float('nan')):7.4f}"
                                                           for group in GROUPS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--label", default="endo")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset)
    every = {}
    for run in args.runs:
        every[run] = compare(run, data, args.label)
        print_table(f"{run} (label {args.label}; Dice, mean per image)", every[run])
    if len(every) > 1:
        names = next(iter(every.values()))
        mean = {name: {group: float(np.nanmean([every[run][name].get(group, np.nan) for run in every]))
                       for group in ("all", *GROUPS)} for name in names}
        print_table(f"mean over {len(every)} runs", mean)
    return 0


if __name__ == "__main__":
    sys.exit(main())
