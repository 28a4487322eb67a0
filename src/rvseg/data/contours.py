"""Contour files and the one rasterisation rule.

Contour files (RVSC, Sunnybrook) hold one ``x y`` pair of floats per line, in pixel coordinates of
the image: ``x`` along columns, ``y`` along rows, pixel centres at integer coordinates (0-based).

**Rasterisation rule.** A pixel ``(row r, column c)`` belongs to the mask of a closed polygon iff its
centre ``(x=c, y=r)`` lies inside the polygon (even-odd rule; ``skimage.draw.polygon``). A centre
exactly on an edge belongs to the mask iff the polygon's interior lies just below-right of it
(towards larger x and y), like the top-left fill rule of graphics rasterisers: contours traced in
half-pixel steps along pixel centres (Sunnybrook's) would otherwise gain half their length in
pixels (+1.3% to +10% of the area). With this rule the mask's pixel count matches the polygon's
shoelace area to well under 1% for the contour sizes of cardiac MRI (a square with integer corners
covers exactly its area), and the mask moves exactly with integer translations of the points.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from skimage.draw import polygon as draw_polygon
from skimage.measure import find_contours, label

from rvseg.errors import DataError
from rvseg.io import write_text

#: The RVSC contour kinds and the structures they outline: ``i`` the endocardium (the cavity), ``o`` the
#: epicardium (cavity and wall), as in ``P01-0080-icontour-manual.txt``.
LABEL_OF_CONTOUR = {"i": "endo", "o": "epi"}
CONTOUR_OF_LABEL = {label: kind for kind, label in LABEL_OF_CONTOUR.items()}

#: Shift (in pixels) that turns "centre on an edge" into a decision by the point just below-right of
#: the centre: far below any real coordinate's precision, far above float64 rounding at image sizes.
EDGE_TIE_BREAK_PX = 1e-6

#: How far outside the image (in pixels) a contour point may lie before the file is rejected.
#: Expert contours hug the image edge at most; anything beyond this is the wrong image or units.
OUTSIDE_TOLERANCE_PX = 2.0


def contour_file_name(image_id: str, label: str) -> str:
    """The RVSC name of a predicted contour: ``<id>-icontour-auto.txt`` (endo), ``<id>-ocontour-auto.txt``
    (epi), and ``<id>-<label>-contour-auto.txt`` for any other label."""
    kind = CONTOUR_OF_LABEL.get(label)
    return f"{image_id}-{kind}contour-auto.txt" if kind else f"{image_id}-{label}-contour-auto.txt"


def read_contour_file(path: str | Path, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an ``x y`` contour file.

    Args:
        path: the text file.
        image_shape: (H, W) of the image it belongs to; when given, points far outside are rejected.

    Returns:
        float64 array of shape (N, 2), columns ``(x, y)``.

    Raises:
        DataError: a malformed line, fewer than 3 points, a NaN/inf, or a point far outside the image.
    """
    path = Path(path)
    try:
        # utf-8-sig: a contour file re-saved by a Windows editor may start with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read contour file ({exc.__class__.__name__}: {exc})", path) from None
    points = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"line {number} is malformed: expected 'x y', got {line.strip()!r}", path)
        try:
            x, y = float(fields[0]), float(fields[1])
        except ValueError:
            raise DataError(f"line {number} is malformed: {line.strip()!r} is not two numbers", path) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(f"line {number} holds a non-finite coordinate ({line.strip()!r})", path)
        points.append((x, y))
    if len(points) < 3:
        raise DataError(f"a contour needs at least 3 points, this file has {len(points)}", path)
    xy = np.asarray(points, dtype=np.float64)
    if image_shape is not None:
        check_points_inside(xy, image_shape, path)
    return xy


def check_points_inside(xy: np.ndarray, image_shape: tuple[int, int], path: str | Path) -> None:
    """Raise :class:`DataError` if any ``(x, y)`` point lies far outside an (H, W) image."""
    height, width = image_shape
    tol = OUTSIDE_TOLERANCE_PX
    outside = (xy[:, 0] < -tol) | (xy[:, 0] > width - 1 + tol) | (xy[:, 1] < -tol) | (xy[:, 1] > height - 1 + tol)
    if outside.any():
        x, y = xy[np.argmax(outside)]
        raise DataError(
            f"{int(outside.sum())} contour point(s) lie outside the {height} x {width} image "
            f"(first: x={x:.1f}, y={y:.1f})",
            path,
        )


def write_contour_file(path: str | Path, xy: np.ndarray) -> None:
    """Write ``(x, y)`` points as an RVSC-style contour file, atomically."""
    lines = "".join(f"{x:.6f} {y:.6f}\n" for x, y in np.asarray(xy, dtype=np.float64))
    write_text(path, lines)


def polygon_area(xy: np.ndarray) -> float:
    """Shoelace area of a closed polygon given as (N, 2) ``(x, y)`` points."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_to_mask(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a closed polygon with the pixel-centre rule (module docstring).

    Args:
        xy: (N, 2) points ``(x, y)``; the polygon closes from the last point back to the first.
        shape: (H, W) of the mask.

    Returns:
        bool array of shape (H, W).
    """
    mask = np.zeros(shape, dtype=bool)
    # skimage counts centres on an edge as inside; moving the polygon up-left by a hair makes them
    # inside only where the interior extends below-right of them (module docstring).
    rows, cols = draw_polygon(xy[:, 1] - EDGE_TIE_BREAK_PX, xy[:, 0] - EDGE_TIE_BREAK_PX, shape=shape)
    mask[rows, cols] = True
    return mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground region of a bool (H, W) mask (empty stays empty)."""
    return largest_region(label(mask, connectivity=2))


def largest_region(regions: np.ndarray) -> np.ndarray:
    """bool mask of the largest region of an int label image (0 = background; none: all False)."""
    if regions.max() == 0:
        return np.zeros(regions.shape, dtype=bool)
    counts = np.bincount(regions.ravel())
    counts[0] = 0
    return regions == int(np.argmax(counts))


def mask_to_contour(mask: np.ndarray) -> np.ndarray | None:
    """Boundary of the largest region of a bool (H, W) mask as (N, 2) ``(x, y)`` points.

    The boundary is the 0.5 iso-line of the region (``skimage.measure.find_contours`` on the padded
    mask), so rasterising it again with :func:`polygon_to_mask` gives back the region's pixels.
    Returns None for an empty mask.
    """
    region = largest_component(mask)
    if not region.any():
        return None
    padded = np.pad(region.astype(np.float64), 1)
    # Foreground fully connected: a region joined only at a pixel corner is one 8-connected region
    # (as post-processing keeps it), so its outline must pass through that corner, not split there.
    contours = find_contours(padded, 0.5, fully_connected="high")
    outer = max(contours, key=lambda c: polygon_area(c[:, ::-1]))
    rows, cols = outer[:, 0] - 1, outer[:, 1] - 1
    if len(outer) > 1 and np.allclose(outer[0], outer[-1]):
        rows, cols = rows[:-1], cols[:-1]
    return np.stack([cols, rows], axis=1)
