"""Filling contour maps: images that draw a contour instead of holding a filled mask.

Some data sets (e.g. the RVSC training set as PNG pairs) ship each contour as a *map*: a 0/255
image holding either the filled region or only its OUTLINE, the pixels the contour passes through.
:func:`fill_contour_map` turns either into a filled bool mask.

**Filling rule.** The outline pixels belong to the mask, together with every pixel they enclose (a
map describes the region inside one contour, so holes are always filled).

* A filled map (most of its pixels have their whole 3 x 3 neighbourhood inside it) is kept as is.
* A closed outline (it encloses a hole and its skeleton has no free end) is filled by hole filling.
* An open outline (gaps of a few pixels left by downsampling, or only scattered dots where the
  contour had few points) is closed first: the pixels of its skeleton are joined into one closed
  polygon, a short tour without crossings (:func:`outline_tour`), so each gap is bridged by a straight
  segment between the pixels facing each other across it. The polygon is rasterised with
  :func:`~rvseg.data.contours.polygon_to_mask` and hole-filled together with the outline.

Consequences: the outline of a polygon's mask (its boundary pixels) fills back to exactly that mask,
and to within a few pixels when the outline has gaps of 1-3 px. An outline drawn *through* a contour
fills to the contour's polygon plus the outer half of the outline: about half the contour's length
more than its shoelace area (+10 % for an RVSC cavity at 128 x 108). Limitation: a thin shape drawn
with dots spaced more widely than it is thick is ambiguous, and the tour may zig-zag between its
two sides instead of going round.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from rvseg.data.contours import polygon_to_mask

#: Neighbours per pixel considered when chaining outline pixels; joining the chains left looks at all
#: chain ends, so this bounds the work, not the size of a gap that can be bridged.
CHAIN_NEIGHBOURS = 8

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def fill_contour_map(image: np.ndarray) -> np.ndarray | None:
    """Fill a contour map (a filled mask or an outline) following the module's filling rule.

    Args:
        image: (H, W) array, bool or numeric; foreground is every pixel above half of the maximum.

    Returns:
        bool array of shape (H, W), or None when nothing sensible can be filled: the map is empty,
        or the filled result is still only a stroke (no pixel whose whole 3 x 3 neighbourhood lies
        inside it), as for a stray line.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"a contour map must be 2D (H, W), got shape {image.shape}")
    foreground = binarise_map(image)
    if not foreground.any():
        return None
    if is_filled_mask(foreground) or is_closed_outline(foreground):
        filled = ndimage.binary_fill_holes(foreground)
    else:
        filled = ndimage.binary_fill_holes(foreground | bridged_polygon_mask(foreground))
    if not ndimage.binary_erosion(filled, _EIGHT_CONNECTED).any():
        return None
    return filled


def fill_outlines(outlines: np.ndarray) -> np.ndarray:
    """The regions that predicted outlines enclose, as ``rvseg evaluate`` scores an ``outline``-style model.

    Args:
        outlines: bool (..., H, W) outline masks.

    Returns:
        bool array of the same shape: each (H, W) map filled by :func:`fill_contour_map`, all False where
        nothing can be filled.
    """
    outlines = np.asarray(outlines, dtype=bool)
    regions = np.zeros(outlines.shape, dtype=bool).reshape(-1, *outlines.shape[-2:])
    for region, outline in zip(regions, outlines.reshape(regions.shape), strict=True):
        filled = fill_contour_map(outline)
        if filled is not None:
            region[...] = filled
    return regions.reshape(outlines.shape)


def binarise_map(image: np.ndarray) -> np.ndarray:
    """Foreground of an (H, W) map: bool (H, W), True where the value exceeds half the maximum."""
    if image.dtype == bool:
        return image.copy()
    peak = float(image.max()) if image.size else 0.0
    if not peak > 0:
        return np.zeros(image.shape, dtype=bool)
    return image > peak / 2


def is_filled_mask(foreground: np.ndarray) -> bool:
    """Whether a bool (H, W) map is a filled region rather than an outline.

    An outline is a stroke one or two pixels wide, so almost none of its pixels have a full 3 x 3
    neighbourhood in the foreground; a filled region keeps at least a third of them (a 5 x 5 square
    does) and has no holes. Smaller blobs are treated as outlines, which leaves them as they are.
    """
    interior = ndimage.binary_erosion(foreground, _EIGHT_CONNECTED)
    has_holes = bool((ndimage.binary_fill_holes(foreground) & ~foreground).any())
    return not has_holes and 3 * int(interior.sum()) >= int(foreground.sum())


def is_closed_outline(foreground: np.ndarray) -> bool:
    """Whether a bool (H, W) outline is closed: it encloses a hole and its skeleton has no free end."""
    if not (ndimage.binary_fill_holes(foreground) & ~foreground).any():
        return False
    return not skeleton_ends(skeletonize(foreground)).any()


def skeleton_ends(skeleton: np.ndarray) -> np.ndarray:
    """Bool (H, W) mask of the skeleton pixels with at most one 8-neighbour in the skeleton."""
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), _EIGHT_CONNECTED.astype(np.uint8), mode="constant")
    return skeleton & (neighbours <= 2)  # the count includes the pixel itself


def bridged_polygon_mask(foreground: np.ndarray) -> np.ndarray:
    """Mask of the closed polygon through the skeleton of an open outline (bool (H, W) in and out)."""
    rows, cols = np.nonzero(skeletonize(foreground))
    if len(rows) < 3:
        return np.zeros_like(foreground)
    points = np.stack([cols, rows], axis=1).astype(np.float64)
    return polygon_to_mask(points[outline_tour(points)], foreground.shape)


def outline_tour(points: np.ndarray) -> np.ndarray:
    """Order points into a short closed tour without crossings.

    A greedy path (:func:`greedy_path`) is closed into a tour, the points it left out are inserted
    where they lengthen the tour least, and the tour is untangled with 2-opt moves. Along an outline
    this follows the curve and jumps each gap once.

    Args:
        points: float array of shape (N, 2), N >= 3.

    Returns:
        int array of shape (N,): a permutation of ``range(N)``, the visiting order.
    """
    links, left_out = greedy_path(points)
    tour = links_to_order(links, sorted(set(range(len(points))) - set(left_out)))
    for point in left_out:
        tour = insert_cheapest(points, tour, point)
    return untangle(points, tour)


def greedy_path(points: np.ndarray) -> tuple[list[tuple[int, int]], list[int]]:
    """Links ``(i, j)`` forming one path through (N, 2) points, and the points left out of it.

    Near points are linked first, shortest links first (each point takes at most two links and no
    cycle may form), which chains neighbouring outline pixels along the curve; the chains are then
    joined end to end, always at the two nearest free ends. A point that no near link could take (a
    skeleton pixel in the corner between two linked neighbours) is left out: joined end to end it
    would make the path jump across the shape and back.

    Returns:
        (the links, ``M - 1`` for the M points on the path; the indices of the points left out).
    """
    count = len(points)
    degree = np.zeros(count, dtype=int)
    chains = _UnionFind(count)
    links: list[tuple[int, int]] = []

    def link(i: int, j: int) -> None:
        chains.union(i, j)
        degree[i] += 1
        degree[j] += 1
        links.append((i, j))

    for i, j in near_pairs(points):
        if degree[i] < 2 and degree[j] < 2 and chains.find(i) != chains.find(j):
            link(i, j)
    left_out = [int(i) for i in np.flatnonzero(degree == 0)]
    while len(links) < count - len(left_out) - 1:
        ends = np.flatnonzero(degree == 1)
        gaps = np.linalg.norm(points[ends, None, :] - points[None, ends, :], axis=2)
        roots = np.array([chains.find(int(end)) for end in ends])
        gaps[roots[:, None] == roots[None, :]] = np.inf
        a, b = np.unravel_index(int(np.argmin(gaps)), gaps.shape)
        link(int(ends[a]), int(ends[b]))
    return links, left_out


def insert_cheapest(points: np.ndarray, tour: np.ndarray, point: int) -> np.ndarray:
    """The closed ``tour`` (int (M,)) with ``point`` inserted where it adds the least length."""
    here, following = points[tour], points[np.roll(tour, -1)]
    added = (np.linalg.norm(here - points[point], axis=1) + np.linalg.norm(following - points[point], axis=1)
             - np.linalg.norm(here - following, axis=1))
    return np.insert(tour, int(np.argmin(added)) + 1, point)


def near_pairs(points: np.ndarray) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, i < j, of each point with its nearest neighbours, shortest first (ties by index)."""
    distances, neighbours = cKDTree(points).query(points, k=min(CHAIN_NEIGHBOURS, len(points) - 1) + 1)
    lengths = {}
    for i, (row_distances, row_neighbours) in enumerate(zip(distances[:, 1:], neighbours[:, 1:], strict=True)):
        for distance, j in zip(row_distances, row_neighbours, strict=True):
            lengths[(min(i, int(j)), max(i, int(j)))] = float(distance)
    return sorted(lengths, key=lambda pair: (lengths[pair], pair))


def links_to_order(links: list[tuple[int, int]], members: list[int]) -> np.ndarray:
    """Visiting order of a single chain through ``members`` given as ``len(members) - 1`` links."""
    neighbours: dict[int, list[int]] = {i: [] for i in members}
    for i, j in links:
        neighbours[i].append(j)
        neighbours[j].append(i)
    start = next(i for i in members if len(neighbours[i]) < 2)
    order = [start]
    previous = -1
    while len(order) < len(members):
        current = order[-1]
        following = next(n for n in neighbours[current] if n != previous)
        previous = current
        order.append(following)
    return np.asarray(order, dtype=int)


def untangle(points: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Apply improving 2-opt moves to a closed tour until none is left (no two edges then cross)."""
    order = order.copy()
    count = len(order)
    improved = True
    while improved:
        improved = False
        for i in range(count - 2):
            tour = points[order]
            a, b = tour[i], tour[i + 1]
            c, d = tour[i + 2 :], np.roll(tour, -1, axis=0)[i + 2 :]
            if i == 0:  # the edge (last, first) shares the point order[0] with edge (0, 1)
                c, d = c[:-1], d[:-1]
            change = (
                np.linalg.norm(a - c, axis=1)
                + np.linalg.norm(b - d, axis=1)
                - np.linalg.norm(a - b)
                - np.linalg.norm(c - d, axis=1)
            )
            if len(change) and change.min() < -1e-9:
                j = i + 2 + int(np.argmin(change))
                order[i + 1 : j + 1] = order[i + 1 : j + 1][::-1]
                improved = True
    return order


class _UnionFind:
    """Disjoint sets over ``range(count)``: which chain of links each point belongs to."""

    def __init__(self, count: int):
        self.parent = list(range(count))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)
