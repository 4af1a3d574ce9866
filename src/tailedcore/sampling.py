"""Random projection and exact greedy coreset (k-center greedy) selection.

``greedy_coreset`` returns exactly the picks of the straightforward loop
(``greedy_coreset_reference``) but skips most distance computations with
triangle-inequality bounds: the rows are partitioned once into blocks around
pivots, and a row can only move closer to a new centre ``c`` if
``|d(c, pivot) - d(row, pivot)|`` is below its current distance to the
selected set. Both functions compute every distance with the same routine, so
the picks agree bit for bit.
"""

from __future__ import annotations

import numpy as np

# Relative and absolute slack on a lower bound before a row is skipped; far
# above the float32 rounding error of a 128-term sum of squares.
_BOUND_SLACK = 1e-4
_BOUND_FLOOR = 1e-12


def random_projection(in_dim: int, out_dim: int = 128, seed: int = 0) -> np.ndarray:
    """A fixed Gaussian linear map, (in_dim, out_dim) float32, scaled by 1/sqrt(out_dim)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((in_dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)


def squared_distances(rows: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each row to ``center``: (n, d), (d,) -> (n,) float32."""
    diff = rows - center
    return np.einsum("ij,ij->i", diff, diff)


def _check(x: np.ndarray, n: int, start: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-D array (rows, dims), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"x: expected numbers, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("x: contains NaN or infinite values")
    if not 0 <= n <= len(x):
        raise ValueError(f"n={n}: must be between 0 and the number of rows ({len(x)})")
    if n and not 0 <= start < len(x):
        raise ValueError(f"start={start}: must be a row index below {len(x)}")
    return x


def greedy_coreset_reference(x: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """The straightforward k-center greedy loop: one full pass over ``x`` per pick.

    x: (N, d). Returns (n,) int64 row indices in selection order, first = start.
    Each next pick is the row farthest from the picks so far (first index on
    ties); picked rows are never picked again.
    """
    x = _check(x, n, start)
    picks = np.empty(n, dtype=np.int64)
    if n == 0:
        return picks
    min_dist = np.full(len(x), np.inf, dtype=np.float32)
    picks[0] = start
    for i in range(1, n):
        last = picks[i - 1]
        np.minimum(min_dist, squared_distances(x, x[last]), out=min_dist)
        min_dist[last] = -1.0
        picks[i] = int(np.argmax(min_dist))
    return picks


def _partition(x: np.ndarray, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Nearest-pivot assignment to ``n_blocks`` random rows: (N,) block id per row."""
    pivots = x[rng.choice(len(x), size=n_blocks, replace=False)]
    pivot_sq = np.einsum("ij,ij->i", pivots, pivots)
    labels = np.empty(len(x), dtype=np.int64)
    step = 65536
    for lo in range(0, len(x), step):
        block = x[lo : lo + step]
        labels[lo : lo + step] = np.argmin(pivot_sq[None, :] - 2.0 * block @ pivots.T, axis=1)
    return labels


class _Blocks:
    """Rows regrouped by block, with pivot distances kept in float64."""

    def __init__(self, x: np.ndarray, n_blocks: int, seed: int):
        labels = _partition(x, n_blocks, np.random.default_rng(seed))
        self.order = np.argsort(labels, kind="stable")  # position -> original row
        self.rows = x[self.order]
        counts = np.bincount(labels, minlength=n_blocks)
        keep = counts > 0
        self.starts = np.concatenate([[0], np.cumsum(counts)])[:-1][keep]
        self.sizes = counts[keep]
        self.block_of = np.repeat(np.arange(len(self.sizes)), self.sizes)
        sums = np.add.reduceat(self.rows.astype(np.float64), self.starts, axis=0)
        self.pivots = sums / self.sizes[:, None]
        offsets = self.rows - self.pivots[self.block_of]
        self.pivot_dist = np.sqrt(np.einsum("ij,ij->i", offsets, offsets))
        self.radius = np.maximum.reduceat(self.pivot_dist, self.starts)

    def positions(self, blocks: np.ndarray) -> np.ndarray:
        """Positions of all rows of ``blocks`` (sorted block ids), concatenated."""
        sizes = self.sizes[blocks]
        shift = np.repeat(self.starts[blocks] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        return np.arange(int(sizes.sum())) + shift


def greedy_coreset(x: np.ndarray, n: int, start: int = 0, block_size: int = 256, seed: int = 0) -> np.ndarray:
    """Exact k-center greedy selection of ``n`` rows of ``x``, starting at ``start``.

    x: (N, d) float32 (already projected; the projection is the caller's step).
    Returns (n,) int64 row indices in selection order; identical to
    ``greedy_coreset_reference``. ``block_size`` (rows per pivot block) and
    ``seed`` (pivot choice) change the speed only, never the picks.
    """
    x = _check(x, n, start)
    picks = np.empty(n, dtype=np.int64)
    if n == 0:
        return picks
    n_rows = len(x)
    blocks = _Blocks(x, max(1, min(n_rows, n_rows // max(1, block_size))), seed)
    rows, order = blocks.rows, blocks.order
    position_of = np.empty(n_rows, dtype=np.int64)
    position_of[order] = np.arange(n_rows)

    min_dist = np.full(n_rows, np.inf, dtype=np.float32)
    block_max = np.full(len(blocks.sizes), np.inf, dtype=np.float32)
    picks[0] = start
    for i in range(1, n):
        last_position = position_of[picks[i - 1]]
        center = rows[last_position]
        center_to_pivot = np.sqrt(((blocks.pivots - center) ** 2).sum(axis=1))
        reach = np.sqrt(np.maximum(block_max.astype(np.float64), 0.0)) * (1 + _BOUND_SLACK) + _BOUND_FLOOR
        candidates = np.flatnonzero(center_to_pivot - blocks.radius < reach)
        positions = blocks.positions(candidates)
        lower = np.abs(center_to_pivot[blocks.block_of[positions]] - blocks.pivot_dist[positions])
        current = min_dist[positions].astype(np.float64)
        active = positions[lower * lower < current * (1 + _BOUND_SLACK) + _BOUND_FLOOR]
        if active.size:
            min_dist[active] = np.minimum(min_dist[active], squared_distances(rows[active], center))
        min_dist[last_position] = -1.0
        if candidates.size:
            segment_starts = np.concatenate([[0], np.cumsum(blocks.sizes[candidates])[:-1]])
            block_max[candidates] = np.maximum.reduceat(min_dist[positions], segment_starts)
        best = block_max.max()
        tied_blocks = np.flatnonzero(block_max == best)
        tied = blocks.positions(tied_blocks)
        tied = tied[min_dist[tied] == best]
        picks[i] = order[tied].min()
    return picks
