"""Random projection and exact greedy coreset (k-center greedy) selection.

``greedy_coreset`` returns exactly the picks of the straightforward loop
(``greedy_coreset_reference``), which makes one memory-bound pass over all rows
per pick. It instead updates blocks of rows lazily, many centres at a time,
with matrix products, and recomputes with the reference routine every pair
the product cannot rule out, so the picks agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .engine import LocalEngine

# A pair is ruled out by the fast product only if it clears the stored distance
# by this share of |a|^2 + |b|^2 (per 128 dims): over five times the worst-case
# float32 error of the product plus that of the reference's own sum of squares.
_TOLERANCE_PER_128_DIMS = 2e-4
_TOLERANCE_FLOOR = 1e-30
# Centres per matrix product when a block catches up (bounds the product's memory: 1024 x 8192 floats).
_CENTRES_PER_PRODUCT = 8192
# Beyond this squared norm the float32 product could overflow; use the reference loop.
_LARGEST_SAFE_NORM = 1e30


def random_projection(in_dim: int, out_dim: int = 128, seed: int = 0) -> np.ndarray:
    """A fixed Gaussian linear map, (in_dim, out_dim) float32, scaled by 1/sqrt(out_dim)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((in_dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)


def project(rows: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """(..., in_dim) float32 rows through a (in_dim, out_dim) projection -> (..., out_dim) float32.

    A torch product, as the coreset's: numpy's BLAS may give other low bits with another thread count (seen
    with OpenBLAS on AMD EPYC), and the greedy coreset then picks other rows."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    flat = torch.from_numpy(rows.reshape(-1, rows.shape[-1])) @ torch.from_numpy(np.asarray(projection, np.float32))
    return flat.numpy().reshape(*rows.shape[:-1], projection.shape[1])


def squared_distances(rows: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each row to one center (d,) or of row i to centers[i] (n, d): -> (n,) float32."""
    diff = rows - centers
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


def greedy_coreset(x: np.ndarray, n: int, start: int = 0, block_rows: int = 1024, progress: bool = False) -> np.ndarray:
    """Exact k-center greedy selection of ``n`` rows of ``x``, starting at ``start``.

    x: (N, d) float32 (already projected; the projection is the caller's step).
    Returns (n,) int64 row indices in selection order, identical to
    ``greedy_coreset_reference``. ``block_rows`` changes the speed only;
    ``progress`` shows a progress bar.

    How: rows are split into blocks, each with an upper bound of its largest
    distance to the selected set. Only the block with the largest bound is
    brought up to date, with all centres it has not seen yet in one matrix
    product (||a||^2 + ||b||^2 - 2ab on mean-centred rows). Pairs that product
    cannot rule out (within a tolerance far above float32 rounding) are
    recomputed with the reference routine, so stored distances are bitwise
    those of the reference loop.
    """
    x = _check(x, n, start)
    picks = np.empty(n, dtype=np.int64)
    if n == 0:
        return picks
    n_rows, dim = x.shape
    centred = torch.from_numpy(x - x.mean(axis=0, dtype=np.float64).astype(np.float32))
    norms = (centred * centred).sum(dim=1)
    if not bool(torch.isfinite(norms).all()) or float(norms.max()) > _LARGEST_SAFE_NORM:
        return greedy_coreset_reference(x, n, start)
    tolerance = _TOLERANCE_PER_128_DIMS * max(1.0, dim / 128)
    # approx - slack < stored  <=>  (1 - tol) |c|^2 - 2 r.c  <  stored - (1 - tol) |r|^2 + floor
    centre_terms = (1.0 - tolerance) * norms
    row_terms = (1.0 - tolerance) * norms.numpy() - _TOLERANCE_FLOOR
    bounds = np.unique(np.arange(0, n_rows + block_rows, block_rows).clip(max=n_rows))
    n_blocks = len(bounds) - 1
    min_dist = np.full(n_rows, np.inf, dtype=np.float32)
    block_max = np.full(n_blocks, np.inf, dtype=np.float32)
    seen = np.zeros(n_blocks, dtype=np.int64)  # centres already applied to each block

    def refresh(block: int, n_centres: int) -> None:
        lo, hi = bounds[block], bounds[block + 1]
        for first in range(seen[block], n_centres, _CENTRES_PER_PRODUCT):
            centres = picks[first : min(first + _CENTRES_PER_PRODUCT, n_centres)]
            index = torch.from_numpy(centres)
            scores = torch.addmm(centre_terms[index], centred[lo:hi], centred[index].T, alpha=-2.0)
            limit = torch.from_numpy(min_dist[lo:hi] - row_terms[lo:hi])
            rows, cols = (scores < limit[:, None]).nonzero(as_tuple=True)
            if len(rows):
                rows, cols = rows.numpy(), cols.numpy()
                exact = squared_distances(x[lo + rows], x[centres[cols]])
                np.minimum.at(min_dist, lo + rows, exact)
        seen[block] = n_centres
        block_max[block] = min_dist[lo:hi].max()

    picks[0] = start
    bar = tqdm(total=n, desc="coreset", unit="pick", disable=not progress, leave=False, mininterval=0.5)
    for i in range(1, n):
        if i % 1024 == 0:
            bar.update(1024)
        min_dist[picks[i - 1]] = -1.0
        while True:
            top = int(np.argmax(block_max))
            if seen[top] < i:
                refresh(top, i)
                continue
            best = block_max[top]
            stale_ties = np.flatnonzero((block_max == best) & (seen < i))
            if stale_ties.size == 0:
                break
            for block in stale_ties:
                refresh(int(block), i)
        first = int(np.flatnonzero(block_max == best)[0])
        lo, hi = bounds[first], bounds[first + 1]
        picks[i] = lo + int(np.argmax(min_dist[lo:hi] == best))
    bar.update(n - bar.n)
    bar.close()
    return picks


def _greedy_picks(x: np.ndarray, rows: np.ndarray, count: int, start: int) -> np.ndarray:
    """Row indices (into x) of a greedy coreset of ``count`` of ``rows``, from rows[start]."""
    return rows[greedy_coreset(x[rows], count, start=start)]


def two_round_coreset(x: np.ndarray, shards: list[np.ndarray], ratio: float, rng: np.random.Generator,
                      oversample: float = 2.0, block_rows: int = 65536, progress: bool = False,
                      engine=None) -> np.ndarray:
    """Composable greedy coreset: about ``ratio`` x N rows of ``x`` in time linear in N.

    x: (N, d) float32; shards: int64 row-index arrays that partition x (e.g. one per image).
    Round 1: each shard keeps a greedy coreset of ``oversample`` x ``ratio`` of its rows (all if
    that is more). Round 2: consecutive shards are grouped into blocks whose round-1 picks total at
    most ``block_rows`` (at least one shard a block); each block keeps a greedy coreset of ``ratio``
    x its shards' rows (at least one) out of those picks. Every greedy run starts at a random row
    drawn from ``rng``, in shard then block order, before any runs, so an ``engine`` (engine.py)
    may run the shards and then the blocks as parallel tasks with the same result. Returns (about
    ratio x N,) int64 row indices into x, block by block.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio={ratio}: must be in (0, 1]")
    if oversample < 1.0:
        raise ValueError(f"oversample={oversample}: must be at least 1")
    shards = [np.asarray(s, dtype=np.int64) for s in shards if len(s)]
    counts = [min(max(1, int(np.ceil(oversample * ratio * len(s)))), len(s)) for s in shards]
    blocks, block, block_size, block_picks = [], [], 0, 0  # (shard positions, rows covered) per block
    for position, (shard, count) in enumerate(zip(shards, counts)):
        if block and block_picks + count > block_rows:
            blocks.append((block, block_size))
            block, block_size, block_picks = [], 0, 0
        block.append(position)
        block_size += len(shard)
        block_picks += count
    if block:
        blocks.append((block, block_size))
    first_starts = [int(rng.integers(len(s))) for s in shards]
    union_sizes = [sum(counts[p] for p in members) for members, _ in blocks]
    second_starts = [int(rng.integers(size)) for size in union_sizes]
    engine = engine or LocalEngine()
    shared, label = engine.put(x), "coreset shards" if progress else None
    first = engine.map(_greedy_picks, [(shared, s, c, start) for s, c, start in zip(shards, counts, first_starts)],
                       label)
    unions = [np.concatenate([first[p] for p in members]) for members, _ in blocks]
    second = engine.map(_greedy_picks, [(shared, union, min(max(1, int(ratio * size)), len(union)), start)
                                        for union, (_, size), start in zip(unions, blocks, second_starts)], label)
    return np.concatenate(second) if second else np.empty(0, dtype=np.int64)
