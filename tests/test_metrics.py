"""Tests of rvseg.metrics against hand-made cases and independent implementations (SciPy, MONAI)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, gaussian_filter
from scipy.spatial.distance import directed_hausdorff

from rvseg.data.contours import polygon_area, polygon_to_mask, read_contour_file
from rvseg.metrics import (
    METRIC_FIELDS,
    batch_metrics,
    boundary_distances,
    dice_per_image,
    mask_boundary,
    segmentation_metrics,
    summarize,
)

SHAPES = [(24, 20), (40, 56), (64, 48)]
SPACINGS = [(0.7, 1.3), (1.0, 1.0), (1.4, 0.7)]


def random_blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Thresholded smoothed noise: one or more blobs (possibly with holes), 5-40% of the image."""
    field = gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.0, 4.0))
    return field > np.quantile(field, 1 - rng.uniform(0.05, 0.4))


def random_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for index in range(n):
        shape = SHAPES[index % len(SHAPES)]
        yield random_blobs(rng, shape), random_blobs(rng, shape), SPACINGS[index % len(SPACINGS)]


def scaled_boundary_points(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Boundary as MONAI computes it (erosion XOR mask), as (N, 2) points in mm."""
    return np.argwhere(binary_erosion(mask) ^ mask) * np.asarray(spacing)


def rectangle(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


# --- boundaries and distances against SciPy ---------------------------------------------------


def test_boundary_is_erosion_xor_mask_including_image_edge():
    for pred, ref, _ in random_pairs(6):
        for mask in (pred, ref):
            np.testing.assert_array_equal(mask_boundary(mask), binary_erosion(mask) ^ mask)
    full = np.ones((4, 5), dtype=bool)
    expected = full.copy()
    expected[1:3, 1:4] = False  # only pixels touching the image edge are boundary
    np.testing.assert_array_equal(mask_boundary(full), expected)


def test_hd_equals_scipy_directed_hausdorff_on_scaled_boundaries():
    for pred, ref, spacing in random_pairs(12):
        pred_points, ref_points = scaled_boundary_points(pred, spacing), scaled_boundary_points(ref, spacing)
        expected = max(directed_hausdorff(pred_points, ref_points)[0], directed_hausdorff(ref_points, pred_points)[0])
        assert segmentation_metrics(pred, ref, spacing)["hd"] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_directed_distances_equal_brute_force_nearest_boundary_point():
    for pred, ref, spacing in random_pairs(6, seed=1):
        pred_points, ref_points = scaled_boundary_points(pred, spacing), scaled_boundary_points(ref, spacing)
        pairwise = np.linalg.norm(pred_points[:, None, :] - ref_points[None, :, :], axis=2)
        pred_to_ref, ref_to_pred = boundary_distances(pred, ref, spacing)
        np.testing.assert_allclose(pred_to_ref, pairwise.min(axis=1), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ref_to_pred, pairwise.min(axis=0), rtol=1e-12, atol=1e-12)


def test_hd95_is_percentile_of_union_of_both_directions():
    for pred, ref, spacing in random_pairs(6, seed=2):
        pred_to_ref, ref_to_pred = boundary_distances(pred, ref, spacing)
        union = np.concatenate([pred_to_ref, ref_to_pred])
        metrics = segmentation_metrics(pred, ref, spacing)
        assert metrics["hd95"] == pytest.approx(np.percentile(union, 95), rel=1e-12)
        assert metrics["hd95"] <= metrics["hd"]


# --- hand-made cases --------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
def test_squares_offset_by_k_pixels_have_hd_k_times_spacing(k):
    spacing = (0.7, 1.3)
    square = rectangle((30, 30), (8, 18), (8, 18))
    down = np.roll(square, k, axis=0)
    right = np.roll(square, k, axis=1)
    assert segmentation_metrics(down, square, spacing)["hd"] == pytest.approx(k * 0.7)
    assert segmentation_metrics(right, square, spacing)["hd"] == pytest.approx(k * 1.3)
    assert segmentation_metrics(square, right, spacing)["hd"] == pytest.approx(k * 1.3)


def test_identity_is_perfect():
    rng = np.random.default_rng(3)
    mask = random_blobs(rng, (40, 56))
    metrics = segmentation_metrics(mask, mask, (0.7, 1.3))
    assert list(metrics) == list(METRIC_FIELDS)
    assert metrics["dice"] == metrics["jaccard"] == metrics["sensitivity"] == metrics["precision"] == 1.0
    assert metrics["hd"] == metrics["hd95"] == 0.0
    assert metrics["area_error"] == 0.0
    assert metrics["area_pred"] == pytest.approx(mask.sum() * 0.7 * 1.3)
    assert (metrics["empty"], metrics["unit"]) == ("none", "mm")


def test_known_overlap_gives_sensitivity_precision_dice_jaccard_and_areas():
    ref = rectangle((12, 30), (0, 10), (0, 10))  # 100 px
    pred = rectangle((12, 30), (0, 10), (5, 25))  # 200 px, 50 of them on ref
    metrics = segmentation_metrics(pred, ref, (0.5, 3.0))  # 1.5 mm^2 per pixel
    assert metrics["sensitivity"] == pytest.approx(0.5)
    assert metrics["precision"] == pytest.approx(0.25)
    assert metrics["dice"] == pytest.approx(100 / 300)
    assert metrics["jaccard"] == pytest.approx(50 / 250)
    assert metrics["area_pred"] == pytest.approx(300.0)
    assert metrics["area_ref"] == pytest.approx(150.0)
    assert metrics["area_error"] == pytest.approx(150.0)
    # Farthest: ref's left column (col 0) to pred's nearest boundary (col 5), and pred's right
    # column (col 24) to ref's right column (col 9): 15 columns of 3 mm.
    assert metrics["hd"] == pytest.approx(45.0)


def test_no_spacing_measures_in_pixels():
    ref = rectangle((20, 20), (2, 8), (2, 8))
    pred = np.roll(ref, 4, axis=1)
    metrics = segmentation_metrics(pred, ref, None)
    assert metrics["unit"] == "px"
    assert metrics["hd"] == pytest.approx(4.0)
    assert metrics["area_pred"] == 36.0


def test_both_empty():
    empty = np.zeros((10, 12), dtype=bool)
    metrics = segmentation_metrics(empty, empty, (0.7, 1.3))
    assert {k: metrics[k] for k in ("dice", "jaccard", "sensitivity", "precision", "hd", "hd95")} == {
        "dice": 1.0,
        "jaccard": 1.0,
        "sensitivity": 1.0,
        "precision": 1.0,
        "hd": 0.0,
        "hd95": 0.0,
    }
    assert metrics["empty"] == "both"
    assert metrics["area_error"] == 0.0


def test_only_prediction_empty():
    ref = rectangle((10, 12), (2, 5), (2, 6))
    metrics = segmentation_metrics(np.zeros_like(ref), ref, (0.7, 1.3))
    assert metrics["empty"] == "pred"
    assert (metrics["dice"], metrics["jaccard"], metrics["sensitivity"]) == (0.0, 0.0, 0.0)
    assert math.isnan(metrics["precision"])
    assert math.isnan(metrics["hd"]) and math.isnan(metrics["hd95"])
    assert metrics["area_error"] == pytest.approx(-12 * 0.7 * 1.3)


def test_only_reference_empty():
    pred = rectangle((10, 12), (2, 5), (2, 6))
    metrics = segmentation_metrics(pred, np.zeros_like(pred), (0.7, 1.3))
    assert metrics["empty"] == "ref"
    assert (metrics["dice"], metrics["jaccard"], metrics["precision"]) == (0.0, 0.0, 0.0)
    assert math.isnan(metrics["sensitivity"])
    assert math.isnan(metrics["hd"]) and math.isnan(metrics["hd95"])


def test_hd95_convention_on_a_line_differs_from_monai_as_documented():
    # ref: a 21-pixel line; pred: its first pixel. Directed distances: pred->ref [0],
    # ref->pred [0, 1, ..., 20] (x 2 mm). Union percentile: 18.95 px; MONAI's max of the two
    # directed percentiles: 19 px.
    ref = rectangle((3, 25), (1, 2), (2, 23))
    pred = rectangle((3, 25), (1, 2), (2, 3))
    metrics = segmentation_metrics(pred, ref, (1.0, 2.0))
    assert metrics["hd"] == pytest.approx(40.0)
    assert metrics["hd95"] == pytest.approx(2.0 * 18.95)
    pred_to_ref, ref_to_pred = boundary_distances(pred, ref, (1.0, 2.0))
    monai_style = max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95))
    assert monai_style == pytest.approx(2.0 * 19.0)


def test_integer_masks_are_accepted_and_bad_inputs_raise():
    ref = rectangle((10, 12), (2, 5), (2, 6))
    assert segmentation_metrics(ref.astype(np.uint8), ref.astype(float), None)["dice"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(ref, ref[:, :-1], None)
    with pytest.raises(ValueError, match="other than 0 and 1"):
        segmentation_metrics(ref * 0.7, ref, None)
    with pytest.raises(ValueError, match="2D"):
        segmentation_metrics(ref[None], ref[None], None)
    for spacing in [(0.0, 1.0), (1.0,), (1.0, math.nan), (-1.0, 1.0)]:
        with pytest.raises(ValueError, match="spacing_mm"):
            segmentation_metrics(ref, ref, spacing)


# --- MONAI ------------------------------------------------------------------------------------


def as_monai(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask)[None, None].float()


@pytest.fixture(scope="module")
def monai_metrics():
    metrics = pytest.importorskip("monai.metrics")
    return metrics


def monai_value(metric, pred, ref, **kwargs) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's deprecation and empty-mask warnings
        return float(metric(as_monai(pred), as_monai(ref), **kwargs).item())


def test_dice_matches_monai(monai_metrics):
    dice_metric = monai_metrics.DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    cases = list(random_pairs(9, seed=4))
    empty = np.zeros((20, 20), dtype=bool)
    cases += [(empty, empty, None), (empty, rectangle((20, 20), (1, 4), (1, 4)), None)]
    cases += [(rectangle((20, 20), (1, 4), (1, 4)), empty, None)]
    for pred, ref, spacing in cases:
        expected = monai_value(dice_metric, pred, ref)
        assert segmentation_metrics(pred, ref, spacing)["dice"] == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_hd_matches_monai_with_anisotropic_spacing(monai_metrics):
    hd_metric = monai_metrics.HausdorffDistanceMetric(include_background=True, reduction="none")
    for pred, ref, spacing in random_pairs(9, seed=5):
        expected = monai_value(hd_metric, pred, ref, spacing=list(spacing))
        # MONAI computes in float32.
        assert segmentation_metrics(pred, ref, spacing)["hd"] == pytest.approx(expected, rel=1e-5)


def test_monai_hd95_is_max_of_directed_percentiles_of_the_same_distances(monai_metrics):
    hd95_metric = monai_metrics.HausdorffDistanceMetric(include_background=True, reduction="none", percentile=95)
    for pred, ref, spacing in random_pairs(9, seed=6):
        expected = monai_value(hd95_metric, pred, ref, spacing=list(spacing))
        pred_to_ref, ref_to_pred = boundary_distances(pred, ref, spacing)
        monai_style = max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95))
        assert monai_style == pytest.approx(expected, rel=1e-5)


def test_monai_empty_distances_differ_as_documented(monai_metrics):
    hd_metric = monai_metrics.HausdorffDistanceMetric(include_background=True, reduction="none")
    empty = np.zeros((12, 12), dtype=bool)
    assert math.isnan(monai_value(hd_metric, empty, empty))
    assert segmentation_metrics(empty, empty, None)["hd"] == 0.0


# --- batches and summaries --------------------------------------------------------------------


def test_batch_metrics_equals_per_slice_calls_with_shared_or_per_slice_spacing():
    rng = np.random.default_rng(7)
    preds = np.stack([random_blobs(rng, (24, 20)) for _ in range(4)])
    refs = np.stack([random_blobs(rng, (24, 20)) for _ in range(4)])
    spacings = [(0.7, 1.3), None, (1.0, 2.0), (1.4, 0.7)]
    rows = batch_metrics(preds, refs, spacings)
    expected = [segmentation_metrics(p, r, s) for p, r, s in zip(preds, refs, spacings, strict=True)]
    assert rows == expected
    shared = batch_metrics(list(preds), list(refs), (0.7, 1.3))
    assert shared == [segmentation_metrics(p, r, (0.7, 1.3)) for p, r in zip(preds, refs, strict=True)]
    assert [row["unit"] for row in batch_metrics(preds, refs, None)] == ["px"] * 4


def test_batch_metrics_rejects_mismatched_lengths_and_names_the_bad_slice():
    masks = [np.ones((4, 4), dtype=bool)] * 3
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        batch_metrics(masks, masks[:2], None)
    with pytest.raises(ValueError, match="2 spacings for 3 slices"):
        batch_metrics(masks, masks, [(1.0, 1.0), (1.0, 1.0)])
    with pytest.raises(ValueError, match="slice 1: pred has shape"):
        batch_metrics([masks[0], np.ones((4, 5), dtype=bool)], masks[:2], None)


def test_summarize_overall_and_grouped_with_nan_and_counts():
    rows = [
        {"patient": "P01", "phase": "ED", "dice": 0.8, "hd": 4.0, "empty": "none"},
        {"patient": "P01", "phase": "ES", "dice": 0.6, "hd": 6.0, "empty": "none"},
        {"patient": "P02", "phase": "ED", "dice": 0.0, "hd": math.nan, "empty": "pred"},
        {"patient": "P02", "phase": "ES", "dice": 1.0, "hd": 0.0, "empty": "both"},
        {"patient": "P03", "phase": "ES", "dice": 0.0, "hd": math.nan, "empty": "ref"},
    ]
    summary = summarize(rows, by=["phase", "patient"])
    overall = summary["overall"]
    assert (overall["n"], overall["n_both_empty"], overall["n_one_empty"]) == (5, 1, 2)
    assert (overall["n_pred_empty"], overall["n_ref_empty"], overall["n_hd_undefined"]) == (1, 1, 2)
    assert set(overall["metrics"]) == {"dice", "hd"}
    assert overall["metrics"]["dice"]["mean"] == pytest.approx(0.48)
    assert overall["metrics"]["dice"]["sd"] == pytest.approx(np.std([0.8, 0.6, 0.0, 1.0, 0.0], ddof=1))
    assert overall["metrics"]["hd"] == pytest.approx({"mean": 10 / 3, "sd": np.std([4.0, 6.0, 0.0], ddof=1), "n": 3})

    assert list(summary["by"]) == ["phase", "patient"]
    assert list(summary["by"]["patient"]) == ["P01", "P02", "P03"]
    ed = summary["by"]["phase"]["ED"]
    assert ed["n"] == 2 and ed["n_pred_empty"] == 1 and ed["n_hd_undefined"] == 1
    assert ed["metrics"]["hd"] == {"mean": 4.0, "sd": 0.0, "n": 1}  # one value: sd 0
    p03 = summary["by"]["patient"]["P03"]["metrics"]
    assert p03["dice"] == {"mean": 0.0, "sd": 0.0, "n": 1}
    assert math.isnan(p03["hd"]["mean"]) and math.isnan(p03["hd"]["sd"]) and p03["hd"]["n"] == 0


def test_summarize_real_rows_and_metric_choice():
    rng = np.random.default_rng(8)
    rows = batch_metrics([random_blobs(rng, (24, 20)) for _ in range(3)], [random_blobs(rng, (24, 20))] * 3, None)
    for index, row in enumerate(rows):
        row["slice"] = [10, 2, 2][index]
    summary = summarize(rows, by=["slice"])
    assert list(summary["by"]["slice"]) == [2, 10]  # numbers sort by value
    assert list(summary["overall"]["metrics"]) == [f for f in METRIC_FIELDS if f not in ("empty", "unit")]
    only_dice = summarize(rows, by=[], metrics=["dice"])
    assert list(only_dice["overall"]["metrics"]) == ["dice"] and only_dice["by"] == {}
    assert only_dice["overall"]["metrics"]["dice"]["mean"] == pytest.approx(np.mean([r["dice"] for r in rows]))
    with pytest.raises(ValueError, match="row 0 has no grouping key"):
        summarize(rows, by=["phase"])


# --- torch ------------------------------------------------------------------------------------


def test_dice_per_image_equals_segmentation_metrics_dice():
    rng = np.random.default_rng(9)
    targets = np.stack([np.stack([random_blobs(rng, (24, 20)) for _ in range(2)]) for _ in range(3)])
    targets[1, 0] = False  # an empty reference
    probs = np.stack([np.stack([gaussian_filter(rng.random((24, 20)), 1.5) for _ in range(2)]) for _ in range(3)])
    probs = (probs - probs.min()) / (probs.max() - probs.min())
    probs[1, 0] = 0.1  # predicted empty too: both empty
    probs[2, 1] = 0.2  # predicted empty, reference not
    dice = dice_per_image(torch.from_numpy(probs).float(), torch.from_numpy(targets).float(), threshold=0.5)
    assert dice.shape == (3, 2) and dice.dtype == torch.float32
    expected = [
        [segmentation_metrics(probs[b, c] > 0.5, targets[b, c], None)["dice"] for c in range(2)] for b in range(3)
    ]
    np.testing.assert_allclose(dice.numpy(), expected, rtol=1e-6)
    assert dice[1, 0] == 1.0 and dice[2, 1] == 0.0
    as_masks = dice_per_image(torch.from_numpy(probs > 0.5), torch.from_numpy(targets))
    torch.testing.assert_close(as_masks, dice)


def test_dice_per_image_rejects_bad_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        dice_per_image(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="B, C"):
        dice_per_image(torch.zeros(4, 4), torch.zeros(4, 4))


# --- real data --------------------------------------------------------------------------------


def test_rvsc_endo_against_epi_on_real_contours(shared_data):
    folder = shared_data / "rvsc-native" / "patient09" / "P09contours-manual"
    shape, spacing = (256, 216), (0.7014, 0.7014)
    endo_xy = read_contour_file(folder / "P09-0020-icontour-manual.txt", shape)
    epi_xy = read_contour_file(folder / "P09-0020-ocontour-manual.txt", shape)
    endo, epi = polygon_to_mask(endo_xy, shape), polygon_to_mask(epi_xy, shape)
    metrics = segmentation_metrics(endo, epi, spacing)
    pixel_area = spacing[0] * spacing[1]
    assert metrics["area_pred"] == pytest.approx(polygon_area(endo_xy) * pixel_area, rel=0.01)
    assert metrics["area_ref"] == pytest.approx(polygon_area(epi_xy) * pixel_area, rel=0.01)
    assert metrics["precision"] > 0.99  # the cavity lies inside the epicardium
    assert metrics["dice"] == pytest.approx(2 * 7106.5 / (7106.5 + 8767.7), rel=0.02)
    endo_points, epi_points = scaled_boundary_points(endo, spacing), scaled_boundary_points(epi, spacing)
    expected_hd = max(directed_hausdorff(endo_points, epi_points)[0], directed_hausdorff(epi_points, endo_points)[0])
    assert metrics["hd"] == pytest.approx(expected_hd, rel=1e-12)
