"""Occupancy grids over the NAMO world: rasterizing footprints and geodesic distances.

Convention (shared by the planning grid and the mask images): row 0 is the TOP of the world
(largest y), column 0 is the left (x = 0). Cell (i, j) has its centre at
``x = (j + 0.5) * res_x``, ``y = height - (i + 0.5) * res_y``. A shape covers a cell when the
cell's centre lies inside it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import dijkstra


@dataclass(frozen=True)
class Grid:
    """A rows x cols raster of a width x height (metres) world."""

    width: float
    height: float
    rows: int
    cols: int

    @classmethod
    def with_resolution(cls, width: float, height: float, resolution: float) -> Grid:
        return cls(width, height, round(height / resolution), round(width / resolution))

    @classmethod
    def image(cls, width: float, height: float, size: int) -> Grid:
        return cls(width, height, size, size)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def res_x(self) -> float:
        return self.width / self.cols

    @property
    def res_y(self) -> float:
        return self.height / self.rows

    @property
    def sampling(self) -> tuple[float, float]:
        """Metres per cell along (rows, cols), for scipy's distance transforms."""
        return (self.res_y, self.res_x)

    def xs(self) -> np.ndarray:
        return (np.arange(self.cols) + 0.5) * self.res_x

    def ys(self) -> np.ndarray:
        return self.height - (np.arange(self.rows) + 0.5) * self.res_y

    def cell(self, x: float, y: float) -> tuple[int, int]:
        """Cell containing world point (x, y), clipped to the grid."""
        i = int(math.floor((self.height - y) / self.res_y))
        j = int(math.floor(x / self.res_x))
        return (min(max(i, 0), self.rows - 1), min(max(j, 0), self.cols - 1))

    def center(self, i: int, j: int) -> tuple[float, float]:
        return ((j + 0.5) * self.res_x, self.height - (i + 0.5) * self.res_y)


def rect_corners(x: float, y: float, theta: float, half_x: float, half_y: float) -> np.ndarray:
    """(4, 2) corners of a rectangle centred at (x, y) rotated by theta (rad)."""
    c, s = math.cos(theta), math.sin(theta)
    local = np.array([[half_x, half_y], [-half_x, half_y], [-half_x, -half_y], [half_x, -half_y]])
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + np.array([x, y])


def _window(grid: Grid, xmin: float, xmax: float, ymin: float, ymax: float):
    j0 = max(int(math.floor(xmin / grid.res_x)), 0)
    j1 = min(int(math.ceil(xmax / grid.res_x)) + 1, grid.cols)
    i0 = max(int(math.floor((grid.height - ymax) / grid.res_y)), 0)
    i1 = min(int(math.ceil((grid.height - ymin) / grid.res_y)) + 1, grid.rows)
    return i0, i1, j0, j1


@functools.cache
def _centres(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """``grid.xs()`` and ``grid.ys()``, read-only, computed once per grid (the rasterizers'
    hot path)."""
    xs, ys = grid.xs(), grid.ys()
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def rasterize_rect(
    grid: Grid, x: float, y: float, theta: float, half_x: float, half_y: float
) -> np.ndarray:
    """Boolean (rows, cols) mask of cells whose centre lies inside the rotated rectangle."""
    out = np.zeros(grid.shape, dtype=bool)
    c, s = math.cos(theta), math.sin(theta)
    # The rectangle's bounding box (its corners' extent; the window only bounds the test).
    ex, ey = abs(half_x * c) + abs(half_y * s), abs(half_x * s) + abs(half_y * c)
    i0, i1, j0, j1 = _window(grid, x - ex, x + ex, y - ey, y + ey)
    if i0 >= i1 or j0 >= j1:
        return out
    xs, ys = _centres(grid)
    px = xs[j0:j1][None, :] - x
    py = ys[i0:i1][:, None] - y
    u = px * c + py * s
    v = -px * s + py * c
    eps = 1e-9
    out[i0:i1, j0:j1] = (np.abs(u) <= half_x + eps) & (np.abs(v) <= half_y + eps)
    return out


def rasterize_disc(grid: Grid, x: float, y: float, radius: float) -> np.ndarray:
    """Boolean (rows, cols) mask of cells whose centre lies within radius of (x, y)."""
    out = np.zeros(grid.shape, dtype=bool)
    i0, i1, j0, j1 = _window(grid, x - radius, x + radius, y - radius, y + radius)
    if i0 >= i1 or j0 >= j1:
        return out
    xs, ys = _centres(grid)
    px = xs[j0:j1][None, :] - x
    py = ys[i0:i1][:, None] - y
    out[i0:i1, j0:j1] = px * px + py * py <= radius * radius + 1e-12
    return out


def distance_to(grid: Grid, mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (m) from each cell centre to the nearest cell centre of ``mask``."""
    if not mask.any():
        return np.full(grid.shape, np.inf)
    return ndimage.distance_transform_edt(~mask, sampling=grid.sampling)


def geodesic_distance(grid: Grid, free: np.ndarray, sources: list[tuple[int, int]]) -> np.ndarray:
    """Shortest-path length (m) over ``free`` cells from the nearest source, 8-connected.

    Diagonal steps are only allowed when both orthogonal neighbours are free (no corner
    cutting). Cells that are not free or not connected to a source get ``inf``.
    """
    rows, cols = free.shape
    dist = np.full(free.shape, np.inf)
    srcs = [(i, j) for i, j in sources if free[i, j]]
    if not srcs:
        return dist
    # Only the connected component(s) of the sources matter: shrink the graph to them.
    labels, _ = ndimage.label(free, structure=np.ones((3, 3), dtype=bool))
    keep = np.isin(labels, [labels[i, j] for i, j in srcs])
    index = np.full(free.shape, -1, dtype=np.int64)
    n = int(keep.sum())
    index[keep] = np.arange(n)
    ry, rx = grid.res_y, grid.res_x
    heads, tails, weights = [], [], []
    diag = math.hypot(rx, ry)
    for di, dj, w in ((0, 1, rx), (1, 0, ry), (1, 1, diag), (1, -1, diag)):
        # Cell pairs (i, j) -> (i + di, j + dj) as two aligned slices.
        rows_a, rows_b = slice(0, rows - di), slice(di, rows)
        cols_a = slice(max(0, -dj), cols - max(0, dj))
        cols_b = slice(max(0, -dj) + dj, cols - max(0, dj) + dj)
        ok = keep[rows_a, cols_a] & keep[rows_b, cols_b]
        if di and dj:
            # Corner cutting guard: the two orthogonal neighbours must be free as well.
            ok &= keep[rows_a, cols_b] & keep[rows_b, cols_a]
        heads.append(index[rows_a, cols_a][ok])
        tails.append(index[rows_b, cols_b][ok])
        weights.append(np.full(int(ok.sum()), w))
    h = np.concatenate(heads)
    t = np.concatenate(tails)
    wts = np.concatenate(weights)
    graph = coo_matrix((wts, (h, t)), shape=(n, n)).tocsr()
    src_idx = [int(index[i, j]) for i, j in srcs]
    d = dijkstra(graph, directed=False, indices=src_idx, min_only=True)
    dist[keep] = d
    return dist


# The 8 steps of the grid graph, (di, dj); a cell's slot d holds its edge along _STEPS[d].
_STEPS = np.array([(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)])


class GridGraph:
    """The 8-connected graph of ``free`` cells (no corner cutting), built once, for many
    shortest-path queries with cells taken out: ``distances(source, *cuts)`` equals
    ``geodesic_distance(grid, free & ~removed, [source])`` without rebuilding the graph.

    Every cell owns 8 slots, one per step (cells of a 1-cell pad around the grid too, so
    neighbours never wrap), weight inf where the step is not an edge. Taking a cell out sets its
    24 slots to inf: its 8 steps, the 8 steps into it, and the 8 diagonals it guards (a
    diagonal needs both cells beside it free), so the graph stays the one of ``free & ~removed``
    (for the cells that stay; ``cut`` does it for the border of the removed cells only). The
    search runs on a CSR of the free cells and their edges only (the finite slots), which
    ``cut`` addresses through the slots' positions in it.
    """

    def __init__(self, grid: Grid, free: np.ndarray):
        self.grid = grid
        self.free = free
        rows, cols = grid.rows + 2, grid.cols + 2
        self._cols = cols
        padded = np.zeros((rows, cols), dtype=bool)
        padded[1:-1, 1:-1] = free
        self._padded = padded
        ok = np.zeros((rows, cols, 8), dtype=bool)  # slot (cell, step) is an edge
        inner = (slice(1, -1), slice(1, -1))
        for d, (di, dj) in enumerate(_STEPS):
            to = (slice(1 + di, rows - 1 + di), slice(1 + dj, cols - 1 + dj))
            edge = padded[inner] & padded[to]
            if di and dj:  # corner cutting guard
                edge &= padded[1:-1, 1 + dj : cols - 1 + dj] & padded[1 + di : rows - 1 + di, 1:-1]
            ok[1:-1, 1:-1, d] = edge
        diag = math.hypot(grid.res_x, grid.res_y)
        weights = np.array(
            [diag if di and dj else (grid.res_x if dj else grid.res_y) for di, dj in _STEPS]
        )
        # Nodes: the free cells in row-major order; edges: the slots that are edges, in slot order
        # (so grouped by node). _position[slot] = its edge's index in the CSR (-1: no edge).
        n = int(free.sum())
        self._node = np.full(rows * cols, -1, dtype=np.int32)
        self._node[padded.reshape(-1)] = np.arange(n, dtype=np.int32)
        slots = np.flatnonzero(ok)
        self._position = np.full(ok.size, -1, dtype=np.int32)
        self._position[slots] = np.arange(len(slots), dtype=np.int32)
        cell, step = slots >> 3, slots & 7  # 8 slots a cell
        self.data = weights[step]
        targets = cell + (_STEPS[:, 0] * cols + _STEPS[:, 1])[step]
        indptr = np.searchsorted(cell, np.flatnonzero(padded), "left").astype(np.int32)
        indptr = np.append(indptr, np.int32(len(slots)))
        # One CSR reused by every query (its data rewritten in place: no per-query validation).
        self._graph = csr_matrix((self.data.copy(), self._node[targets], indptr), shape=(n, n))
        # Slots a removed cell cuts, as (cell offset, slot) pairs relative to it.
        cut = [(0, d) for d in range(8)]  # its own steps
        cut += [(-(di * cols + dj), d) for d, (di, dj) in enumerate(_STEPS)]  # steps into it
        for d, (di, dj) in enumerate(_STEPS[4:], start=4):  # diagonals passing beside it
            cut += [(-dj, d), (-di * cols, d)]
        self._cut_offsets = np.array([o for o, _ in cut])
        self._cut_slots = np.array([s for _, s in cut])

    def cut(self, removed: np.ndarray, origin: tuple[int, int] = (0, 0)) -> Cut:
        """The edges cut when the ``removed`` cells are taken out: a bool mask of the grid, or of
        a window of it whose top-left cell is ``origin`` (cells outside it stay).

        Only the border of the removed cells needs its slots cut (those with a free 8-neighbour
        that stays): the others can be entered only from removed cells, and the diagonals they
        guard join cells that are removed or not free, so no path from a cell that stays
        changes."""
        i0, j0 = origin
        rows, cols = removed.shape
        removed = removed & self.free[i0 : i0 + rows, j0 : j0 + cols]  # others have no edges
        # The cells that stay in the window grown by one (padded coordinates start at i0, j0).
        stays = self._padded[i0 : i0 + rows + 2, j0 : j0 + cols + 2].copy()
        stays[1:-1, 1:-1] &= ~removed
        # A cell that stays among the 3 x 3 around each cell (a removed cell is not one itself).
        across = stays[:, :-2] | stays[:, 1:-1] | stays[:, 2:]
        beside = across[:-2] | across[1:-1] | across[2:]
        i, j = np.nonzero(removed)
        cells = (i + i0 + 1) * self._cols + (j + j0 + 1)  # padded cell ids
        border = cells[beside[i, j]]
        slots = (border[:, None] + self._cut_offsets) * 8 + self._cut_slots
        positions = self._position[slots.reshape(-1)]
        return Cut(self._node[cells], positions[positions >= 0])

    def distances(self, source: tuple[int, int], *cuts: Cut) -> np.ndarray:
        """Geodesic metres from cell ``source`` with the ``cuts`` taken out; inf where
        unreachable, not free, or everywhere when the source itself is removed. Not
        re-entrant: queries on one graph must not run concurrently."""
        node = self._node[(source[0] + 1) * self._cols + source[1] + 1]
        out = np.full(self.grid.shape, np.inf)
        if node < 0 or any((c.nodes == node).any() for c in cuts):
            return out
        # Cut the edges, search, then restore just those (not a copy of every edge).
        data = self._graph.data
        entries = np.concatenate([c.entries for c in cuts]) if cuts else slice(0, 0)
        try:
            data[entries] = np.inf
            out[self.free] = dijkstra(self._graph, directed=True, indices=node)
        finally:
            data[entries] = self.data[entries]
        return out


@dataclass(frozen=True)
class Cut:
    """Cells taken out of a ``GridGraph`` (their node ids, all of them) and the edges cut (their
    positions in its CSR)."""

    nodes: np.ndarray
    entries: np.ndarray
