"""The post-processing rules on hand-made stacks whose right answer is known."""

import numpy as np
import pytest

from rvseg.errors import ConfigError
from rvseg.postprocess import postprocess_scores, single_region, stack_regions


def box(shape, top, left, height, width, value=1.0) -> np.ndarray:
    image = np.zeros(shape, np.float32)
    image[top:top + height, left:left + width] = value
    return image


SHAPE = (40, 40)
# A stack from base to apex: the RV (near rows 5-20, cols 5-25) shrinks; on the apical slice a larger
# false region (the LV cavity, say) appears far from it.
BASE = box(SHAPE, 5, 5, 15, 20, 0.9)
MID = box(SHAPE, 8, 8, 10, 12, 0.8)
APEX_TRUE = box(SHAPE, 10, 10, 4, 5, 0.7)
APEX_FALSE = box(SHAPE, 26, 26, 8, 8, 0.8)


def test_the_stack_rule_follows_the_rv_to_the_apex_where_largest_takes_the_wrong_region():
    scores = [BASE[None], MID[None], (APEX_TRUE + APEX_FALSE)[None]]
    stacked = postprocess_scores(scores, "stack", stacks=["P1-ED"] * 3, positions=[0.0, 10.0, 20.0])
    largest = postprocess_scores(scores, "largest")
    assert np.array_equal(stacked[2][0], APEX_TRUE > 0.5)
    assert np.array_equal(largest[2][0], APEX_FALSE > 0.5)
    for kept, score in zip(stacked[:2], scores[:2], strict=True):  # a single region is kept as it is
        assert np.array_equal(kept, score > 0.5)
    # the order along the stack comes from the positions, not from the list
    shuffled = postprocess_scores(scores[::-1], "stack", stacks=["P1-ED"] * 3, positions=[20.0, 10.0, 0.0])
    assert np.array_equal(shuffled[0][0], APEX_TRUE > 0.5)


def test_the_anchor_is_the_most_probable_region_and_the_walk_goes_both_ways():
    # The middle slice holds the strongest region, the ends each a near and a larger far region.
    strong = box(SHAPE, 8, 8, 12, 12, 1.0)
    end = box(SHAPE, 10, 10, 5, 5, 0.6) + box(SHAPE, 28, 28, 9, 9, 0.6)
    kept = stack_regions(np.stack([end, strong, end]) > 0.5, np.stack([end, strong, end]))
    near = box(SHAPE, 10, 10, 5, 5) > 0
    assert np.array_equal(kept[0], near) and np.array_equal(kept[2], near)
    assert np.array_equal(kept[1], strong > 0)


def test_a_slice_without_a_continuation_keeps_its_largest_region_and_an_empty_slice_passes_the_guide_on():
    far_small, far_large = box(SHAPE, 30, 2, 3, 3, 0.9), box(SHAPE, 28, 28, 8, 8, 0.9)
    scores = np.stack([BASE, np.zeros(SHAPE, np.float32), APEX_TRUE + APEX_FALSE, far_small + far_large])
    kept = stack_regions(scores > 0.5, scores)
    assert not kept[1].any()
    assert np.array_equal(kept[2], APEX_TRUE > 0.5)  # found through the empty slice
    assert np.array_equal(kept[3], far_large > 0.5)  # nothing touches: the largest


def test_touching_within_the_tolerance_and_the_largest_overlap_wins():
    guide = box(SHAPE, 10, 10, 10, 10, 1.0)
    gap = box(SHAPE, 8, 21, 12, 6, 0.9)  # one empty column from the guide: touched once grown by 2 (12 px)
    overlapping_less = box(SHAPE, 20, 10, 3, 3, 0.9)  # adjacent to it: 3 px overlap grown by 1, 6 px by 2
    scores = np.stack([guide, gap + overlapping_less])
    assert np.array_equal(stack_regions(scores > 0.5, scores)[1], gap > 0.5)
    assert np.array_equal(stack_regions(scores > 0.5, scores, tolerance=1)[1], overlapping_less > 0.5)


def test_every_rule_but_none_fills_holes_and_keeps_one_region_per_label():
    ring = box(SHAPE, 5, 5, 12, 12, 0.9) - box(SHAPE, 9, 9, 4, 4, 0.9)
    speck = box(SHAPE, 30, 30, 2, 2, 0.9)
    label_two = box(SHAPE, 20, 2, 5, 5, 0.9)
    scores = [np.stack([ring + speck, label_two])] * 2
    filled = box(SHAPE, 5, 5, 12, 12) > 0
    for rule in ("stack", "largest"):
        for masks in postprocess_scores(scores, rule, stacks=["s", "s"], positions=[0.0, 1.0]):
            assert np.array_equal(masks[0], filled), rule
            assert np.array_equal(masks[1], label_two > 0.5), rule
    raw = postprocess_scores(scores, "none")
    assert np.array_equal(raw[0], scores[0] > 0.5)


def test_images_without_a_stack_fall_back_to_the_largest_region():
    scores = [BASE[None], MID[None], (APEX_TRUE + APEX_FALSE)[None]]
    largest = postprocess_scores(scores, "largest")
    cases = {
        "no stacks": dict(stacks=None, positions=None),
        "stack unknown": dict(stacks=[None] * 3, positions=[0.0, 1.0, 2.0]),
        "position unknown": dict(stacks=["s"] * 3, positions=[0.0, 1.0, None]),
        "stacks of one": dict(stacks=["a", "b", "c"], positions=[0.0, 1.0, 2.0]),
    }
    for name, keys in cases.items():
        masks = postprocess_scores(scores, "stack", **keys)
        assert all(np.array_equal(a, b) for a, b in zip(masks, largest, strict=True)), name
    # images of different sizes cannot be stacked
    resized = [scores[0], scores[1], np.pad(scores[2], ((0, 0), (0, 1), (0, 0)))]
    masks = postprocess_scores(resized, "stack", stacks=["s"] * 3, positions=[0.0, 1.0, 2.0])
    assert np.array_equal(masks[2][0, :40], single_region(APEX_TRUE + APEX_FALSE > 0.5))


def test_an_unknown_rule_is_refused():
    with pytest.raises(ConfigError, match="--postprocess must be one of stack, largest, none"):
        postprocess_scores([BASE[None]], "biggest")
