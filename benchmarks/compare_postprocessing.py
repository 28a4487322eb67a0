"""Compare post-processing rules on trained runs' validation predictions (issue 7).

    python benchmarks/compare_postprocessing.py DATASET RUN [RUN ...] [--label endo] [--thresholds 0.4]

A RUN may also be an evaluation folder written with ``rvseg evaluate --save-scores``: its saved scores
are used instead of running the model (its split is whatever it evaluated).

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

For the epicardium of such a model, ``with-endo`` is ``stack``'s epicardium joined with ``stack``'s
endocardium, holes filled: the epicardium encloses the cavity, so an endo pixel outside it is a missed
epi pixel (when the endocardium is right).

With ``--thresholds 0.3,0.4``, the raw and stack rules are also scored at other decision thresholds
(``raw@0.4``, ``stack@0.4``): the probabilities are mapped piecewise-linearly so that the threshold
lands on 0.5 (:func:`at_threshold`), which keeps their order for the stack rule's anchor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from rvseg.data.dataset import load_dataset
from rvseg.evaluate import read_scores, slice_levels, split_scores, stack_keys
from rvseg.inference import Predictor
from rvseg.metrics import segmentation_metrics
from rvseg.postprocess import EIGHT_CONNECTED, postprocess_scores

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


def at_threshold(score: np.ndarray, threshold: float) -> np.ndarray:
    """``score`` mapped monotonically onto [0, 1] so that ``threshold`` becomes 0.5."""
    return np.where(score < threshold, 0.5 * score / threshold,
                    0.5 + 0.5 * (score - threshold) / (1.0 - threshold)).astype(np.float32)


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


def run_scores(source: str, data) -> tuple[list[int], list[str], list[np.ndarray]]:
    """Val sample indices, label names and score maps (L, H, W) of a run, or of an evaluation folder's
    ``scores.npz`` (``rvseg evaluate --save-scores``, e.g. from a GPU machine whose checkpoints stayed there)."""
    saved = Path(source) / "scores.npz"
    if saved.is_file():
        ids, labels, scores = read_scores(saved)
        index_of = {row["id"]: i for i, row in enumerate(data.rows)}
        return [index_of[i] for i in ids], labels, scores
    predictor = Predictor.from_checkpoints([source])
    indices, _, scores = split_scores(predictor, data, "val")
    return [int(i) for i in indices], predictor.labels, scores


def compare(source: str, data, label_name: str, thresholds: list[float]) -> dict[str, dict[str, float]]:
    """Rule -> {"all", "ED", "ES", "base", "mid", "apex"} -> mean per-image Dice on the val patients."""
    indices, labels, all_scores = run_scores(source, data)
    label = data.label_indices([label_name])[0]
    scores = [s[labels.index(label_name)] for s in all_scores]
    references = [data.masks[i, label, :score.shape[0], :score.shape[1]].astype(bool)
                  for i, score in zip(indices, scores, strict=True)]
    levels = slice_levels(data, indices, label)
    group_of = {"ED": np.array([data.rows[i]["phase"] == "ED" for i in indices]),
                "ES": np.array([data.rows[i]["phase"] == "ES" for i in indices])}
    group_of.update({level: np.array([levels[i] == level for i in indices]) for level in ("base", "mid", "apex")})
    keys = stack_keys(data, indices)
    rules = rule_masks(scores, *keys)
    for threshold in thresholds:
        moved = [at_threshold(score, threshold) for score in scores]
        for name in ("raw", "stack"):
            rules[f"{name}@{threshold:g}"] = [m[0] for m in postprocess_scores(
                [s[None] for s in moved], RVSEG_RULES[name], *keys)]
    if label_name == "endo" and "epi" in labels:
        epi = [s[labels.index("epi")] for s in all_scores]
        rules.update(epi_rule_masks(scores, epi, *keys, rules["stack"]))
    if label_name == "epi" and "endo" in labels:
        endo = [s[labels.index("endo")] for s in all_scores]
        kept_endo = [m[0] for m in postprocess_scores([s[None] for s in endo], "stack", *keys)]
        rules["with-endo"] = [ndimage.binary_fill_holes(epi | cavity)
                              for epi, cavity in zip(rules["stack"], kept_endo, strict=True)]
    results = {}
    for name, masks in rules.items():
        dice = np.array([segmentation_metrics(mask, reference, None)["dice"]
                         for mask, reference in zip(masks, references, strict=True)])
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
    parser.add_argument("--thresholds", default="", help="other decision thresholds, comma-separated")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset)
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    every = {}
    for run in args.runs:
        every[run] = compare(run, data, args.label, thresholds)
        print_table(f"{run} (label {args.label}; Dice, mean per image)", every[run])
    if len(every) > 1:
        names = next(iter(every.values()))
        mean = {name: {group: float(np.nanmean([every[run][name].get(group, np.nan) for run in every]))
                       for group in ("all", *GROUPS)} for name in names}
        print_table(f"mean over {len(every)} runs", mean)
    return 0


if __name__ == "__main__":
    sys.exit(main())
