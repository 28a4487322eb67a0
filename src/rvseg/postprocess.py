"""Post-processing: predicted score maps to masks of one region per structure.

RVSC contours are one closed polygon per structure, so every rule but ``none`` leaves each label one
8-connected region per image, holes filled (but see ``exclusive`` below): masks, written contours and
areas then agree. The rules
(:data:`RULES`) differ in *which* region is kept:

- ``none``: the thresholded masks (``score > 0.5``) as they are.
- ``largest``: on each image on its own, each label's largest region by pixel count.
- ``stack`` (the default of ``rvseg evaluate`` and ``rvseg predict``): the images that form one stack
  of parallel slices at one instant of the cycle (one patient's ED slices, say) are processed
  together, because the RV is one connected body through them. Per label:

  1. the *anchor* is the slice whose most probable region (largest summed score) is the most probable
     of the stack (of equals, the one nearest the middle of the stack); it keeps that region;
  2. walking from the anchor towards each end of the stack, a slice keeps, among its regions that
     touch the kept region of the slice walked before it (grown by :data:`STACK_TOLERANCE_PX` pixels,
     so the RV may shift between slices), the one that overlaps it most. A slice with no touching
     region keeps its largest region, as under ``largest``; an empty slice keeps nothing and passes
     the previous region on.

  Images at the same position in one stack are walked as neighbours. Images whose stack cannot be
  formed (no stack, phase or slice position known, a stack of one image, or images of different sizes
  in one stack) fall back to ``largest``. Positions along a stack are in one unit for the whole stack
  (:func:`stack_positions`).

With ``exclusive`` (labels that cannot overlap, as ACDC's RV cavity, LV myocardium and LV cavity), a
pixel in the masks of several labels then keeps the most probable of them, so that masks, label maps,
areas and volumes describe the same pixels; under a rule other than ``none`` each label then keeps its
largest region again, without filling holes: the holes are other labels' (the myocardium is a ring
around the LV cavity, which the rule's hole filling had joined to it). (RVSC's and Sunnybrook's endo-
and epicardium nest, so they are not exclusive.)

Why ``stack``: towards the apex the RV shrinks to a few dozen pixels and the errors of a model are
bright fat or the LV cavity taken for it, often a larger region than the true one, so ``largest``
keeps the wrong region. Its neighbour towards the base tells the two apart. On 15 CPU models of the
real RVSC set (``benchmarks/compare_postprocessing.py``, ``results/rvsc.md``) ``stack`` raised the
mean validation endo Dice over ``largest`` by 0.008 (apical third +0.026); it was lower on one model
(-0.005).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from scipy import ndimage

from rvseg.checks import check_choice, finite_or_none
from rvseg.data.contours import largest_component, largest_region

RULES = ("stack", "largest", "none")
#: How far (pixels) the kept region of one slice is grown to find its continuation on the next.
STACK_TOLERANCE_PX = 2
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def postprocess_scores(scores: Sequence[np.ndarray], rule: str = "largest",
                       stacks: Sequence[Hashable | None] | None = None,
                       positions: Sequence[float | None] | None = None, exclusive: bool = False) -> list[np.ndarray]:
    """Masks of score maps under one post-processing rule (module docstring).

    Args:
        scores: float (L, H_i, W_i) filled score maps, one per image (foreground is ``score > 0.5``).
        rule: one of :data:`RULES`.
        stacks: for ``stack``, each image's stack at one instant (e.g. ``(patient, "ED")``), or None
            where unknown; images with the same key are processed together.
        positions: for ``stack``, each image's position along its stack (mm or slice number), or None.
        exclusive: the labels cannot overlap: a pixel of several keeps the most probable (module docstring).

    Returns:
        bool (L, H_i, W_i) masks, one per image, in the order of ``scores``.
    """
    masks = _rule_masks(scores, rule, stacks, positions)
    if exclusive:
        masks = [most_probable_label(mask, np.asarray(score)) for mask, score in zip(masks, scores, strict=True)]
        if rule != "none":
            masks = [np.stack([largest_component(label_mask) for label_mask in mask]) for mask in masks]
    return masks


def most_probable_label(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """bool (L, H, W) ``masks`` where each pixel in several masks stays only in that of its highest score."""
    contested = masks.sum(axis=0) > 1
    if not contested.any():
        return masks
    best = np.argmax(np.where(masks, scores, -np.inf), axis=0)
    return masks & (~contested | (np.arange(len(masks))[:, None, None] == best))


def _rule_masks(scores: Sequence[np.ndarray], rule: str, stacks: Sequence[Hashable | None] | None,
                positions: Sequence[float | None] | None) -> list[np.ndarray]:
    check_rule(rule)
    masks = [np.asarray(score) > 0.5 for score in scores]
    if rule == "none":
        return masks
    result: list[np.ndarray | None] = [None] * len(masks)
    if rule == "stack" and stacks is not None and positions is not None:
        for members in _stack_members(masks, stacks, positions):
            ordered = sorted(members, key=lambda i: positions[i])
            kept = [stack_regions(np.stack([masks[i][label] for i in ordered]),
                                  np.stack([scores[i][label] for i in ordered]))
                    for label in range(masks[ordered[0]].shape[0])]
            for k, i in enumerate(ordered):
                result[i] = np.stack([label_masks[k] for label_masks in kept])
    return [stacked if stacked is not None else np.stack([single_region(mask) for mask in image])
            for stacked, image in zip(result, masks, strict=True)]


def stack_positions(stacks: Sequence[Hashable | None], locations: Sequence, numbers: Sequence) -> list[float | None]:
    """Each image's position along its stack, in one unit for the whole stack.

    Args:
        stacks: each image's stack key, or None (no position).
        locations: each image's slice location in mm, or None; text is parsed, and text that is not a
            finite number counts as missing.
        numbers: each image's slice number, or None (text as for ``locations``).

    Returns:
        per image: the slice location rounded to 0.01 mm when every image of its stack has one, else the
        slice number when every image of its stack has one, else None.
    """
    members: dict[Hashable, list[int]] = {}
    for index, stack in enumerate(stacks):
        if stack is not None:
            members.setdefault(stack, []).append(index)
    positions: list[float | None] = [None] * len(stacks)
    for indices in members.values():
        for values in (locations, numbers):
            parsed = [finite_or_none(values[i]) for i in indices]
            if all(value is not None for value in parsed):
                for i, value in zip(indices, parsed, strict=True):
                    positions[i] = round(value, 2)
                break
    return positions


def check_rule(rule: str) -> None:
    """Raise ConfigError unless ``rule`` is one of :data:`RULES`."""
    check_choice(rule, RULES, "--postprocess")


def stack_regions(masks: np.ndarray, scores: np.ndarray, tolerance: int = STACK_TOLERANCE_PX) -> np.ndarray:
    """The ``stack`` rule (module docstring) for one label on one stack.

    Args:
        masks: bool (S, H, W) thresholded masks of the S slices, in order along the stack.
        scores: float (S, H, W) their score maps.
        tolerance: pixels the kept region of a slice is grown by to find its continuation.

    Returns:
        bool (S, H, W): at most one region per slice, holes filled.
    """
    labelled = [ndimage.label(mask, structure=EIGHT_CONNECTED)[0] for mask in masks]
    kept = np.zeros_like(masks, dtype=bool)
    masses = [ndimage.sum(score, regions, range(1, regions.max() + 1)) for score, regions in
              zip(scores, labelled, strict=True)]
    middle = (len(masks) - 1) / 2
    candidates = [(float(m.max()), -abs(s - middle), s) for s, m in enumerate(masses) if len(m)]
    if not candidates:
        return kept
    anchor = max(candidates)[2]
    kept[anchor] = labelled[anchor] == 1 + int(np.argmax(masses[anchor]))
    for step in (1, -1):
        guide = kept[anchor]
        for s in range(anchor + step, len(masks) if step == 1 else -1, step):
            kept[s] = _continuation(labelled[s], guide, tolerance)
            if kept[s].any():
                guide = kept[s]
    return np.stack([ndimage.binary_fill_holes(mask) for mask in kept])


def single_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a bool (H, W) mask, holes filled (empty stays empty)."""
    return ndimage.binary_fill_holes(largest_component(mask))


def _continuation(regions: np.ndarray, guide: np.ndarray, tolerance: int) -> np.ndarray:
    """Of a slice's labelled regions, the one overlapping ``guide`` (grown) most, else the largest."""
    if regions.max() == 0:
        return np.zeros(regions.shape, dtype=bool)
    grown = ndimage.binary_dilation(guide, structure=EIGHT_CONNECTED, iterations=tolerance) if tolerance else guide
    overlap = np.bincount(regions[grown], minlength=regions.max() + 1)
    overlap[0] = 0
    if overlap.max() == 0:
        return largest_region(regions)
    return regions == int(np.argmax(overlap))


def _stack_members(masks: Sequence[np.ndarray], stacks: Sequence[Hashable | None],
                   positions: Sequence[float | None]) -> list[list[int]]:
    """Indices of the images of each stack that the ``stack`` rule can process (module docstring)."""
    groups: dict[Hashable, list[int]] = {}
    for index, (stack, position) in enumerate(zip(stacks, positions, strict=True)):
        if stack is not None and position is not None:
            groups.setdefault(stack, []).append(index)
    return [members for members in groups.values()
            if len(members) > 1 and len({masks[i].shape for i in members}) == 1]
