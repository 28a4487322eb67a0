"""Filling contour maps: images that draw a contour instead of holding a filled mask.

Some data sets (e.g. the RVSC training set as PNG pairs) ship each contour as a *map*: a 0/255
image holding either the filled region or only its OUTLINE, the pixels the contour passes through.
:func:`fill_contour_map` turns either into a filled bool mask.

**Filling rule.** The outline pixels belong to the mask, together with every pixel they enclose.
A closed outline is filled by hole filling. An open one (gaps of a few pixels left by downsampling, or
only scattered dots on sparse contours) is first closed by joining its pixels into one closed
polygon, the shortest non-crossing tour through them (see :func:`outline_tour`), so every gap is
bridged by a straight segment between the two pixels facing each other across it; the polygon is
rasterised with :func:`~rvseg.data.contours.polygon_to_mask` and hole-filled together with the outline.
Because the outline pixels are included, the filled area of a polygon's outline is the polygon's own
mask (the outline being the mask's boundary pixels), and for an outline drawn *through* a contour it
exceeds the polygon's shoelace area by about half the contour's length.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from rvseg.data.contours import polygon_to_mask

#: Neighbours per pixel considered when joining outline pixels into chains; bridging the remaining
#: gaps between chains looks at all chain ends, so this only bounds the work, not the gap size.
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
    neighbourhood in the foreground; a filled region keeps at least a third of them (a 3 x 4 blob
    already does), and has no holes.
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

    Neighbouring pixels are chained first (greedy shortest links, at most two per point, no cycle
    before the end), the chains are then joined end to end, nearest ends first, and the tour is
    untangled with 2-opt moves. Along an outline this follows the curve and jumps each gap once.

    Args:
        points: float array of shape (N, 2), N >= 3.

    Returns:
        int array of shape (N,): a permutation of ``range(N)``, the visiting order.
    """
    links = chain_links(points)
    links = join_chains(points, links)
    return untangle(points, links_to_order(links, len(points)))


def chain_links(points: np.ndarray) -> list[tuple[int, int]]:
    """Greedy short links between near points: each point gets at most two, and no cycle forms."""
    count = len(points)
    distances, neighbours = cKDTree(points).query(points, k=min(CHAIN_NEIGHBOURS, count - 1) + 1)
    pairs = {}
    for i in range(count):
        for distance, j in zip(distances[i, 1:], neighbours[i, 1:]):
            pairs[(min(i, int(j)), max(i, int(j)))] = distance
    degree = np.zeros(count, dtype=int)
    chains = _UnionFind(count)
    links = []
    for (i, j), _ in sorted(pairs.items(), key=lambda item: (item[1], item[0])):
        if degree[i] < 2 and degree[j] < 2 and chains.union(i, j):
            degree[i] += 1
            degree[j] += 1
            links.append((i, j))
    return links


def join_chains(points: np.ndarray, links: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join the chains left by :func:`chain_links` into one, always linking the two nearest free ends."""
    count = len(points)
    degree = np.bincount(np.asarray(links, dtype=int).ravel(), minlength=count) if links else np.zeros(count, int)
    chains = _UnionFind(count)
    for i, j in links:
        chains.union(i, j)
    links = list(links)
    while len(links) < count - 1:
        ends = np.flatnonzero(degree < 2)
        gaps = np.linalg.norm(points[ends, None, :] - points[None, ends, :], axis=2)
        roots = np.array([chains.find(int(e)) for e in ends])
        gaps[roots[:, None] == roots[None, :]] = np.inf
        a, b = np.unravel_index(int(np.argmin(gaps)), gaps.shape)
        i, j = int(ends[a]), int(ends[b])
        chains.union(i, j)
        degree[i] += 1
        degree[j] += 1
        links.append((i, j))
    return links


def links_to_order(links: list[tuple[int, int]], count: int) -> np.ndarray:
    """Visiting order of a single chain given as ``count - 1`` links (a path through all points)."""
    neighbours: list[list[int]] = [[] for _ in range(count)]
    for i, j in links:
        neighbours[i].append(j)
        neighbours[j].append(i)
    start = next(i for i in range(count) if len(neighbours[i]) < 2)
    order = [start]
    previous = -1
    while len(order) < count:
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
    """Disjoint sets over ``range(count)``; :meth:`union` says whether two sets were merged."""

    def __init__(self, count: int):
        self.parent = list(range(count))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> bool:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return False
        self.parent[root_a] = root_b
        return True
