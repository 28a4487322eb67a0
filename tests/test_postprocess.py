"""The post-processing rules on hand-made stacks whose right answer is known."""

import numpy as np
import pytest

from rvseg.errors import ConfigError
from rvseg.postprocess import postprocess_scores, single_region, stack_positions, stack_regions


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
    # the order along the stack comes from the positions, not from the list: here mid, apex, base
    shuffled = postprocess_scores([scores[1], scores[2], scores[0]], "stack", stacks=["P1-ED"] * 3,
                                  positions=[10.0, 20.0, 0.0])
    assert np.array_equal(shuffled[1][0], APEX_TRUE > 0.5)
    # Where the order matters: the mid slice lies below the base; on the apex, region A touches the
    # base and region B the mid slice. Walked in position order (base, mid, apex) the apex follows the
    # mid slice to B; in list order (base, apex, mid) it would follow the base to A.
    mid = box(SHAPE, 20, 5, 10, 10, 0.8)
    region_a, region_b = box(SHAPE, 5, 20, 4, 5, 0.9), box(SHAPE, 31, 5, 5, 6, 0.9)
    kept = postprocess_scores([BASE[None], (region_a + region_b)[None], mid[None]], "stack", stacks=["s"] * 3,
                              positions=[0.0, 20.0, 10.0])
    assert np.array_equal(kept[1][0], region_b > 0.5)


def test_each_label_is_walked_on_its_own():
    scores = [np.stack([BASE, BASE]), np.stack([MID, MID]), np.stack([APEX_TRUE + APEX_FALSE, APEX_FALSE])]
    masks = postprocess_scores(scores, "stack", stacks=["s"] * 3, positions=[0.0, 1.0, 2.0])
    assert np.array_equal(masks[2][0], APEX_TRUE > 0.5)
    assert np.array_equal(masks[2][1], APEX_FALSE > 0.5)  # label 2 has no continuation: its largest
    scores[2] = np.stack([APEX_FALSE, APEX_TRUE + APEX_FALSE])
    masks = postprocess_scores(scores, "stack", stacks=["s"] * 3, positions=[0.0, 1.0, 2.0])
    assert np.array_equal(masks[2][0], APEX_FALSE > 0.5) and np.array_equal(masks[2][1], APEX_TRUE > 0.5)


def test_the_anchor_is_chosen_by_summed_score_not_by_size_and_ties_go_to_the_middle():
    # Slice 0: a large faint region F0 (150 px x 0.55 = 82.5) and a small sure one X0; slice 1: a sure
    # region S (100 px x 1.0 = 100) over X0 and a faint F1 over F0. Anchored at S (the most probable), the
    # walk keeps X0 on slice 0; anchored at the largest region, F0, it would keep F0 and F1.
    f0, x0 = box(SHAPE, 2, 2, 10, 15, 0.55), box(SHAPE, 27, 27, 5, 6, 0.9)
    sure, f1 = box(SHAPE, 25, 25, 10, 10, 1.0), box(SHAPE, 2, 2, 10, 12, 0.55)
    scores = np.stack([f0 + x0, sure + f1])
    kept = stack_regions(scores > 0.5, scores)
    assert np.array_equal(kept[1], sure > 0.5) and np.array_equal(kept[0], x0 > 0.5)
    # equal masses: the anchor is the slice nearest the middle, whatever the stack's direction
    ends, middle = box(SHAPE, 25, 25, 10, 10, 1.0), box(SHAPE, 2, 2, 10, 10, 1.0)
    both = ends + middle
    for order in (np.stack([ends, both, ends]), np.stack([ends, both, ends])[::-1]):
        assert np.array_equal(stack_regions(order > 0.5, order)[1], middle > 0.5)


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


def test_positions_are_in_one_unit_per_stack():
    stacks = ["a", "a", "a", "b", "b", "c", None]
    locations = ["-30.004", None, "-10", "5", "6", "nan", "1"]
    numbers = [1, 2, "3", None, "x", 4, 1]
    # a: one location missing, so slice numbers for all; b: locations; c: a non-finite location, and
    # its number; an image without a stack has no position
    assert stack_positions(stacks, locations, numbers) == [1, 2, 3, 5, 6, 4, None]
    assert stack_positions(["a", "a"], [-30.004, -20.0], [None, None]) == [-30.0, -20.0]
    assert stack_positions(["a", "a"], [None, 1.0], [None, 2]) == [None, None]


def test_an_unknown_rule_is_refused():
    with pytest.raises(ConfigError, match="--postprocess must be one of stack, largest, none"):
        postprocess_scores([BASE[None]], "biggest")
