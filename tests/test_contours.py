"""The rasterisation rule and contour files: property tests on random star-shaped polygons."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from rvseg.data.contours import (
    mask_to_contour,
    polygon_area,
    polygon_to_mask,
    read_contour_file,
    write_contour_file,
)
from rvseg.errors import DataError
from rvseg.postprocess import single_region

CANVAS = (160, 160)
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def star_polygons(draw) -> tuple[np.ndarray, np.ndarray]:
    """A star-shaped polygon: ``(centre, xy)``, ``xy`` of shape (N, 2) as ``(x, y)`` points.

    The vertices go round ``centre`` at increasing angles (consecutive gaps < 180 degrees), so the
    polygon is simple and star-shaped about ``centre``. Radius 15-45 px is the size range of
    ventricle contours in 128-256 px images; the polygon stays 25 px or more inside the canvas.
    """
    count = draw(st.integers(8, 48))
    base_radius = draw(st.floats(15.0, 45.0))
    wobble = np.asarray(draw(st.lists(st.floats(-0.2, 0.2), min_size=count, max_size=count)))
    angle_jitter = np.asarray(draw(st.lists(st.floats(-0.3, 0.3), min_size=count, max_size=count)))
    centre = np.array([draw(st.floats(75.0, 85.0)), draw(st.floats(75.0, 85.0))])
    step = 2 * math.pi / count
    angles = (np.arange(count) + angle_jitter) * step
    radii = base_radius * (1 + wobble)
    xy = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return centre, xy


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@PROPERTY_SETTINGS
@given(star_polygons())
def test_mask_area_matches_shoelace_area(polygon):
    _, xy = polygon
    mask = polygon_to_mask(xy, CANVAS)
    assert mask.dtype == bool and mask.shape == CANVAS
    area = polygon_area(xy)
    assert abs(np.count_nonzero(mask) - area) <= 0.04 * area


@PROPERTY_SETTINGS
@given(star_polygons(), st.integers(-20, 20), st.integers(-20, 20))
def test_integer_translation_moves_the_mask_exactly(polygon, dx, dy):
    _, xy = polygon
    original = polygon_to_mask(xy, CANVAS)
    moved = polygon_to_mask(xy + [dx, dy], CANVAS)
    assert np.array_equal(np.argwhere(moved), np.argwhere(original) + [dy, dx])


@PROPERTY_SETTINGS
@given(star_polygons(), st.floats(0.3, 0.95))
def test_polygon_scaled_inside_another_gives_a_nested_mask(polygon, scale):
    centre, xy = polygon
    outer = polygon_to_mask(xy, CANVAS)
    inner = polygon_to_mask(centre + scale * (xy - centre), CANVAS)
    assert inner.any()
    assert not (inner & ~outer).any()
    assert np.count_nonzero(inner) < np.count_nonzero(outer)


@PROPERTY_SETTINGS
@given(star_polygons())
def test_mask_to_contour_round_trip(polygon):
    _, xy = polygon
    mask = polygon_to_mask(xy, CANVAS)
    contour = mask_to_contour(mask)
    assert contour.ndim == 2 and contour.shape[1] == 2
    assert dice(polygon_to_mask(contour, CANVAS), mask) >= 0.98


def test_pixel_centre_rule_on_a_square():
    # Corners at half-pixel positions: exactly the centres 3..6 (4 x 4) are inside.
    square = np.array([[2.5, 2.5], [6.5, 2.5], [6.5, 6.5], [2.5, 6.5]])
    mask = polygon_to_mask(square, (10, 10))
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:7, 3:7] = True
    assert np.array_equal(mask, expected)
    assert polygon_area(square) == 16.0


def test_centres_on_edges_follow_the_top_left_rule():
    # Integer corners put 20 pixel centres on the edges: only those with the interior below-right
    # of them count, so the square covers exactly its area and two squares sharing an edge never
    # share a pixel.
    left = np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]])
    right = left + [4.0, 0.0]
    left_mask, right_mask = polygon_to_mask(left, (10, 12)), polygon_to_mask(right, (10, 12))
    expected = np.zeros((10, 12), dtype=bool)
    expected[2:6, 2:6] = True
    assert np.array_equal(left_mask, expected)
    assert np.count_nonzero(right_mask) == 16
    assert not (left_mask & right_mask).any()


def test_x_runs_along_columns():
    # A wide, flat rectangle: 8 columns (x 1..8) by 2 rows (y 1..2).
    rectangle = np.array([[0.5, 0.5], [8.5, 0.5], [8.5, 2.5], [0.5, 2.5]])
    rows, cols = np.nonzero(polygon_to_mask(rectangle, (6, 12)))
    assert set(rows) == {1, 2}
    assert set(cols) == set(range(1, 9))


@PROPERTY_SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0.6, 2.0), st.floats(0.45, 0.6))
def test_contour_of_a_post_processed_mask_gives_back_every_pixel(seed, blur, level):
    # Ragged model outputs: one 8-connected region, often joined at pixel corners only.
    noise = np.random.default_rng(seed).random((40, 48))
    mask = single_region(ndimage.gaussian_filter(noise, blur) > level)
    if mask.any():
        assert np.array_equal(polygon_to_mask(mask_to_contour(mask), mask.shape), mask)


def test_a_region_joined_at_a_corner_is_outlined_whole():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:3] = mask[3:5, 3:5] = True
    assert np.array_equal(polygon_to_mask(mask_to_contour(mask), mask.shape), mask)


def test_mask_to_contour_of_empty_mask_is_none():
    assert mask_to_contour(np.zeros((8, 8), dtype=bool)) is None


def test_contour_file_round_trip(tmp_path):
    xy = np.array([[10.25, 20.5], [30.0, 20.5], [30.0, 40.125]])
    path = tmp_path / "sub" / "P01-0000-icontour-manual.txt"
    write_contour_file(path, xy)
    assert np.allclose(read_contour_file(path, (64, 64)), xy)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1 2\n3 4\n5 six\n", "line 3 is malformed"),
        ("1 2\n3 4 5\n6 7\n", "line 2 is malformed"),
        ("1 2\n3 4\n", "at least 3 points, this file has 2"),
        ("1 2\nnan 4\n5 6\n", "line 2 holds a non-finite coordinate"),
        ("1 2\n3 4\n5 600\n", "1 contour point(s) lie outside the 64 x 48 image"),
    ],
)
def test_bad_contour_file_names_file_and_problem(tmp_path, text, problem):
    path = tmp_path / "bad-icontour-manual.txt"
    path.write_text(text)
    with pytest.raises(DataError) as raised:
        read_contour_file(path, (64, 48))
    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


def test_points_just_outside_the_edge_are_accepted(tmp_path):
    # Expert contours may hug the border: up to 2 px beyond the last pixel centre is tolerated.
    path = tmp_path / "edge.txt"
    path.write_text("-1.5 0\n47 0\n47 65\n")
    assert read_contour_file(path, (64, 48)).shape == (3, 2)
