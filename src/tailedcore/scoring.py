"""Nearest-neighbour search in a memory bank, patch scores and anomaly maps.

Search backends (``SEARCHES``):
- ``exact``: blocked float32 matrix products in torch (the fastest exact path
  on a CPU: distance = |q|^2 + |m|^2 - 2 q.m, reduced block by block);
- ``flat``: faiss ``IndexFlatL2`` (exact, slower, kept as a cross-check);
- ``ivf`` / ``hnsw``: faiss approximate indexes for fast test time;
- ``ivf-batched``: the inverted lists of faiss's ``ivf`` (same centroids, same
  candidates), scanned list by list with one matrix product per list for a
  batch of queries: faster for batches of whole images.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from .engine import fast_bfloat16

SearchResult = tuple[np.ndarray, np.ndarray]  # squared distances (Q, k) float32, indices (Q, k) int64


# The search a model fitted from the command line keeps, and so predicts, calibrates and serves with:
# the fastest setting within 0.3 points of image and pixel AUROC of exact search on both real noisy
# long-tail sets measured (docs/performance.md, section 4): half faiss's number of lists (2 sqrt(M)),
# nprobe 12, ranked on 256 principal axes with 4 candidates rescored. ``--search exact`` is the reference.
SERVING_SEARCH = {"search": "ivf-batched",
                  "search_options": {"nlist_factor": 2, "nprobe": 12, "rerank": 4, "ranking_dim": 256}}


class ExactSearch:
    """Exact k-NN by blocked matrix products. memory: (M, D) float32."""

    def __init__(self, memory: np.ndarray, memory_block: int = 8192, query_block: int = 8192):
        self.memory = torch.from_numpy(np.ascontiguousarray(memory, dtype=np.float32))
        self.norms = (self.memory * self.memory).sum(dim=1)
        self.memory_block, self.query_block = memory_block, query_block

    def _search_block(self, queries: torch.Tensor, k: int, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        best_d = torch.full((len(queries), k), float("inf"))
        best_i = torch.zeros((len(queries), k), dtype=torch.int64)
        for start in range(0, len(self.memory), self.memory_block):
            block = self.memory[start : start + self.memory_block]
            partial = torch.addmm(norms[start : start + len(block)], queries, block.T, alpha=-2.0)
            if k == 1:
                d, i = partial.min(dim=1, keepdim=True)
            else:
                d, i = partial.topk(min(k, partial.shape[1]), dim=1, largest=False)
            d_all = torch.cat([best_d, d], dim=1)
            i_all = torch.cat([best_i, i + start], dim=1)
            best_d, pos = d_all.topk(k, dim=1, largest=False) if k > 1 else d_all.min(dim=1, keepdim=True)
            best_i = i_all.gather(1, pos)
        return best_d, best_i

    @torch.inference_mode()
    def search_partial(self, queries: np.ndarray, k: int = 1, excluded: np.ndarray | None = None) -> SearchResult:
        """k smallest |m|^2 - 2 q.m per query (the search before |q|^2 is added) and their indices; rows
        ``excluded`` ((r,) int64) are never returned (infinite distance if fewer than k rows are left)."""
        queries_t = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        norms = self.norms
        if excluded is not None and len(excluded):
            norms = norms.clone()
            norms[torch.from_numpy(np.asarray(excluded, dtype=np.int64))] = float("inf")
        dists, indices = [], []
        for start in range(0, len(queries_t), self.query_block):
            d, i = self._search_block(queries_t[start : start + self.query_block], k, norms)
            dists.append(d)
            indices.append(i)
        return torch.cat(dists).numpy(), torch.cat(indices).numpy()

    def search(self, queries: np.ndarray, k: int = 1, excluded: np.ndarray | None = None) -> SearchResult:
        partial, indices = self.search_partial(queries, k, excluded)
        return finish_distances(queries, partial), indices


def finish_distances(queries: np.ndarray, partial: np.ndarray) -> np.ndarray:
    """Squared distances from ``search_partial`` values: + |q|^2, clamped at 0 (rounding)."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    return (torch.from_numpy(partial) + (q * q).sum(dim=1, keepdim=True)).clamp_(min=0.0).numpy()


def _search_shard(memory: np.ndarray, queries: np.ndarray, k: int) -> SearchResult:
    return ExactSearch(memory).search_partial(queries, k)


class ShardedSearch:
    """Exact k-NN with the memory split into shards searched as engine tasks (engine.py).

    Shards are whole multiples of ExactSearch's memory block, so each computes
    what one process would over its rows; the driver keeps, per query, the
    smallest value, the earlier shard on a tie, as one process does: for k = 1
    the result is bitwise that of ExactSearch.
    """

    def __init__(self, memory: np.ndarray, engine, memory_block: int = 8192):
        memory = np.ascontiguousarray(memory, dtype=np.float32)
        blocks = -(-len(memory) // memory_block)
        per_shard = -(-blocks // engine.workers) * memory_block
        self.engine, self.offsets = engine, list(range(0, len(memory), per_shard))
        self.shards = [engine.put(memory[start : start + per_shard]) for start in self.offsets]

    def search(self, queries: np.ndarray, k: int = 1) -> SearchResult:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        parts = self.engine.map(_search_shard, [(shard, queries, k) for shard in self.shards])
        partial = np.concatenate([d for d, _ in parts], axis=1)
        indices = np.concatenate([i + start for (_, i), start in zip(parts, self.offsets)], axis=1)
        order = np.argsort(partial, axis=1, kind="stable")[:, :k]
        return (finish_distances(queries, np.take_along_axis(partial, order, axis=1)),
                np.take_along_axis(indices, order, axis=1))


def trained_ivf(memory: np.ndarray, nlist: int | None = None, seed: int = 0,
                nlist_factor: float = 4.0) -> faiss.IndexIVFFlat:
    """An empty faiss IVF-Flat index with its lists trained on memory (M, D) float32: ``nlist`` lists, by
    default about ``nlist_factor`` sqrt(M) (faiss's guideline: 4), each trained on at least 39 points
    (faiss's minimum)."""
    if nlist_factor <= 0:
        raise ValueError(f"nlist_factor={nlist_factor}: must be > 0")
    nlist = nlist or max(1, min(4096, int(nlist_factor * np.sqrt(len(memory))), len(memory) // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(memory.shape[1]), memory.shape[1], nlist)
    index.cp.seed = seed
    index.train(memory)
    return index


class FaissSearch:
    """A faiss index over the memory; ``kind`` is flat, ivf or hnsw, each with its own options (``OPTIONS``).

    An approximate index can come back empty-handed for a query (IVF lists
    probed are empty): those queries are answered by exact search.
    """

    OPTIONS = {"flat": (), "ivf": ("nlist", "nlist_factor", "nprobe", "seed"), "hnsw": ("hnsw_m", "ef_search")}

    def __init__(self, memory: np.ndarray, kind: str = "flat", nlist: int | None = None, nprobe: int = 8,
                 hnsw_m: int = 32, ef_search: int = 64, seed: int = 0, nlist_factor: float = 4.0):
        memory = np.ascontiguousarray(memory, dtype=np.float32)
        dim = memory.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatL2(dim)
        elif kind == "ivf":
            index = trained_ivf(memory, nlist, seed, nlist_factor)
            index.nprobe = nprobe
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m)
            index.hnsw.efSearch = ef_search
        else:
            raise ValueError(f"search='{kind}': unknown faiss index")
        index.add(memory)
        self.index = index
        self.exact = ExactSearch(memory) if kind != "flat" else None

    def search(self, queries: np.ndarray, k: int = 1) -> SearchResult:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        d, i = self.index.search(queries, k)
        i = i.astype(np.int64)
        missed = np.flatnonzero((i < 0).any(axis=1))
        if missed.size and self.exact is not None:
            d[missed], i[missed] = self.exact.search(queries[missed], k)
        return d, i


_SHAPE_STEP = 32  # ranking products: rows of lists and of queries padded to a multiple of this


class BatchedIVFSearch:
    """IVF search with the scan done list by list: the inverted lists of ``trained_ivf``, but each
    list is compared with all the queries of the batch that probe it in one matrix product, where
    faiss scans query by query. memory: (M, D) float32.

    ``rerank`` 0: float32 throughout, and the ``nprobe`` lists of each query as faiss picks them, so
    the candidates and results of ``ivf``. ``rerank`` R > 0 (R >= k): lists and candidates are ranked
    by bfloat16 matrix products (about 3x faster than float32 on CPUs with bfloat16 units; inputs and
    products rounded to 8 significant bits), and
    the R best candidates of each query are scored again in float32: the distances returned are
    float32 distances to the rows returned. ``bfloat16`` None: bfloat16 ranking where the CPU has
    bfloat16 units (``engine.fast_bfloat16``), float32 ranking elsewhere, where bfloat16 is emulated
    and far slower. ``ranking_dim`` r (with ``rerank``): lists and candidates are ranked on the
    memory's first r principal axes (D / r times fewer multiply-adds; the distance along the other
    axes is left out of the ranking, not of the distances returned; r >= D ranks on every dimension,
    as without it). Queries whose probed lists hold fewer than k rows are answered by exact search.
    ``nlist_factor`` (without ``nlist``): about nlist_factor sqrt(M) lists. The scan costs a few small
    operations per list besides its products, so fewer, longer lists (2 with nprobe 8 scans as many
    rows as 4 with nprobe 16) are faster for the same rows scanned.
    """

    def __init__(self, memory: np.ndarray, nlist: int | None = None, nprobe: int = 8, rerank: int = 0,
                 seed: int = 0, bfloat16: bool | None = None, ranking_dim: int | None = None,
                 nlist_factor: float = 4.0):
        memory = np.ascontiguousarray(memory, dtype=np.float32)
        if rerank < 0:
            raise ValueError(f"rerank={rerank}: must be 0 (float32) or a number of candidates")
        if ranking_dim is not None and not (rerank and ranking_dim > 0):
            raise ValueError(f"ranking_dim={ranking_dim}: needs rerank > 0 and ranking_dim > 0")
        self.trained = trained_ivf(memory, nlist, seed, nlist_factor)  # owns the quantizer
        self.quantizer, self.rerank = self.trained.quantizer, rerank
        self.ranking = torch.bfloat16 if (fast_bfloat16() if bfloat16 is None else bfloat16) else torch.float32
        nlist = self.quantizer.ntotal
        self.nprobe = min(nprobe, nlist)
        _, assignment = self.quantizer.search(memory, 1)
        order = np.argsort(assignment[:, 0], kind="stable")
        bounds = np.searchsorted(assignment[order, 0], np.arange(nlist + 1)).tolist()
        self.memory = torch.from_numpy(memory)
        self.projection = (None if ranking_dim is None or ranking_dim >= memory.shape[1]
                           else torch.from_numpy(principal_axes(memory, ranking_dim, seed)))
        rows = self._ranked(self.memory[torch.from_numpy(order)])
        if rerank:
            centroids = self._ranked(torch.from_numpy(self.quantizer.reconstruct_n(0, nlist)))
            self.centroid_norms = (centroids * centroids).sum(dim=1)
            self.centroids_ranked = centroids.to(self.ranking)
            rows = rows.to(self.ranking)
        self.lists = [rows[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.list_norms = [(block.float() ** 2).sum(dim=1) for block in self.lists]
        self.list_ids = [torch.from_numpy(order[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
        if rerank:
            # oneDNN builds a kernel per matrix shape: lists padded to few shapes
            # (rows of distance +inf and id -1) keep them reused.
            padding = [-len(block) % _SHAPE_STEP for block in self.lists]
            self.lists = [F.pad(block, (0, 0, 0, pad)) for block, pad in zip(self.lists, padding)]
            self.list_norms = [F.pad(norms, (0, pad), value=float("inf"))
                               for norms, pad in zip(self.list_norms, padding)]
            self.list_ids = [F.pad(ids, (0, pad), value=-1) for ids, pad in zip(self.list_ids, padding)]
        self.exact = ExactSearch(memory)

    def _ranked(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, D) float32 rows as the ranking sees them: (n, ranking_dim) on the principal axes, else as they are."""
        return rows if self.projection is None else rows @ self.projection

    def _probes(self, queries: np.ndarray, queries_t: torch.Tensor) -> torch.Tensor:
        """(Q, nprobe) list numbers: the nearest centroids of each query."""
        if not self.rerank:
            return torch.from_numpy(self.quantizer.search(queries, self.nprobe)[1])
        products = (queries_t @ self.centroids_ranked.T).float()
        return (self.centroid_norms - 2 * products).topk(self.nprobe, dim=1, largest=False).indices

    def _rescore(self, queries: torch.Tensor, candidates: torch.Tensor, k: int,
                 block: int = 1024) -> SearchResult:
        """The k nearest of each query's (Q, rerank) candidates (-1: none) by float32 distance."""
        distances = torch.empty((len(queries), k))
        indices = torch.empty((len(queries), k), dtype=torch.int64)
        for start in range(0, len(queries), block):
            ids = candidates[start : start + block]
            rows = self.memory[ids.clamp(min=0)]  # (block, rerank, D)
            exact = ((rows - queries[start : start + block, None, :]) ** 2).sum(dim=2)
            exact[ids < 0] = float("inf")
            d, position = exact.topk(k, dim=1, largest=False)
            distances[start : start + block], indices[start : start + block] = d, ids.gather(1, position)
        return distances.numpy(), indices.numpy()

    def _scan(self, queries: torch.Tensor, pair_lists: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``keep`` nearest rows of each (query, probed list) pair: pair_lists (Q * nprobe,) list
        numbers, query-major -> partial distances (|m|^2 - 2 q.m) and memory indices, (Q * nprobe, keep)."""
        pair_order = torch.argsort(pair_lists, stable=True)  # pairs grouped by list
        counts = torch.bincount(pair_lists, minlength=len(self.lists)).tolist()
        found_d, found_i = [], []
        for block, norms, ids, pair_queries in zip(self.lists, self.list_norms, self.list_ids,
                                                   torch.split(pair_order // self.nprobe, counts)):
            if not len(pair_queries):
                continue
            if self.rerank:
                padded = F.pad(pair_queries, (0, -len(pair_queries) % _SHAPE_STEP))
                partial = torch.add(norms, (queries[padded] @ block.T)[: len(pair_queries)].float(), alpha=-2.0)
            else:
                partial = torch.addmm(norms, queries[pair_queries], block.T, alpha=-2.0)
            if len(block) < keep:  # too few rows: pad with misses
                partial = F.pad(partial, (0, keep - len(block)), value=float("inf"))
                ids = F.pad(ids, (0, keep - len(block)), value=-1)
            d, i = partial.min(dim=1, keepdim=True) if keep == 1 else partial.topk(keep, dim=1, largest=False)
            found_d.append(d)
            found_i.append(ids[i])
        pair_d = torch.empty((len(pair_lists), keep))
        pair_i = torch.empty((len(pair_lists), keep), dtype=torch.int64)
        pair_d[pair_order], pair_i[pair_order] = torch.cat(found_d), torch.cat(found_i)
        return pair_d, pair_i

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int = 1) -> SearchResult:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.rerank and k > self.rerank:
            raise ValueError(f"rerank={self.rerank}: must be at least k={k}")
        if not len(queries):
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        exact_queries = torch.from_numpy(queries)
        queries_t = self._ranked(exact_queries).to(self.ranking) if self.rerank else exact_queries
        keep = self.rerank or k  # candidates kept per (query, list) pair and per query
        pair_d, pair_i = self._scan(queries_t, self._probes(queries, queries_t).reshape(-1), keep)
        per_query_d = pair_d.view(len(queries), self.nprobe * keep)
        per_query_i = pair_i.view(len(queries), self.nprobe * keep)
        d, position = (per_query_d.min(dim=1, keepdim=True) if keep == 1
                       else per_query_d.topk(keep, dim=1, largest=False))
        indices = per_query_i.gather(1, position)
        if self.rerank:
            distances, indices = self._rescore(exact_queries, indices, k)
        else:
            distances, indices = finish_distances(queries, d.numpy()), indices.numpy()
        missed = np.flatnonzero((indices < 0).any(axis=1))
        if missed.size:
            distances[missed], indices[missed] = self.exact.search(queries[missed], k)
        return distances, indices


def principal_axes(memory: np.ndarray, dim: int, seed: int = 0, sample: int = 65536) -> np.ndarray:
    """(D, dim) float32 orthonormal columns: the ``dim`` leading principal axes of memory (M, D) float32,
    estimated on at most ``sample`` rows drawn with ``seed``."""
    rows = memory
    if len(memory) > sample:
        rows = memory[np.sort(np.random.default_rng(seed).choice(len(memory), sample, replace=False))]
    centred = rows.astype(np.float64) - rows.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
    return np.ascontiguousarray(vectors[:, ::-1][:, :dim], dtype=np.float32)


SEARCHES: dict[str, Callable[..., ExactSearch | FaissSearch | BatchedIVFSearch]] = {
    "exact": ExactSearch,
    "flat": lambda memory, **kw: FaissSearch(memory, "flat", **kw),
    "ivf": lambda memory, **kw: FaissSearch(memory, "ivf", **kw),
    "hnsw": lambda memory, **kw: FaissSearch(memory, "hnsw", **kw),
    "ivf-batched": BatchedIVFSearch,
}


def search_option_names(search: str) -> tuple[str, ...]:
    """The options a search takes (its class's keyword parameters besides the memory; a faiss index's own)."""
    if search in FaissSearch.OPTIONS:
        return FaissSearch.OPTIONS[search]
    cls = {"exact": ExactSearch, "ivf-batched": BatchedIVFSearch}[search]
    return tuple(name for name in inspect.signature(cls).parameters if name != "memory")


def build_search(memory: np.ndarray, search: str = "exact", **options) -> ExactSearch | FaissSearch | BatchedIVFSearch:
    if search not in SEARCHES:
        raise ValueError(f"search='{search}': choose from {', '.join(SEARCHES)}")
    return SEARCHES[search](memory, **options)


class PatchScorer:
    """Score patches against a memory bank (thread-safe: one search at a time).

    memory: (M, D) float32; weights: (M,) float32 or None (SoftPatch).
    """

    def __init__(self, memory: np.ndarray, weights: np.ndarray | None = None, num_neighbors: int = 1,
                 squared: bool = True, search: str = "exact", engine=None, **search_options):
        """``engine`` (engine.py) with several workers: exact search over memory shards as its tasks."""
        if len(memory) == 0:
            raise ValueError("memory bank is empty")
        self.weights = weights
        self.num_neighbors = min(num_neighbors, len(memory))
        self.squared = squared
        if search == "exact" and engine is not None and engine.workers > 1:
            self.index = ShardedSearch(memory, engine)
        else:
            self.index = build_search(memory, search, **search_options)
        self._lock = threading.Lock()

    def score(self, patches: np.ndarray) -> np.ndarray:
        """(..., D) patch features -> (...) float32 patch scores."""
        flat = patches.reshape(-1, patches.shape[-1])
        with self._lock:
            distances, indices = self.index.search(flat, self.num_neighbors)
        return finish_scores(distances, indices, self.weights, self.squared).reshape(patches.shape[:-1])


class LeftOutScorer:
    """Patch scores of a training image against the memory without the rows made of it (its own patches and
    views), by exact search: about what a new image of its product scores. memory (M, D) float32, weights
    (M,) or None, as ``PatchScorer``'s."""

    def __init__(self, memory: np.ndarray, weights: np.ndarray | None = None, num_neighbors: int = 1,
                 squared: bool = True):
        self.index, self.weights, self.squared = ExactSearch(memory), weights, squared
        self.num_neighbors = min(num_neighbors, len(memory))

    def score(self, patches: np.ndarray, own_rows: np.ndarray) -> np.ndarray:
        """(P, D) patch features of one training image, (r,) int64 memory rows made of it -> (P,) float32."""
        if len(own_rows) > len(self.index.memory) - self.num_neighbors:
            raise ValueError("an image's own rows leave too few memory rows to score it against")
        distances, indices = self.index.search(patches, self.num_neighbors, own_rows)
        return finish_scores(distances, indices, self.weights, self.squared)


def finish_scores(distances: np.ndarray, indices: np.ndarray, weights: np.ndarray | None,
                  squared: bool) -> np.ndarray:
    """(Q, k) squared distances to the k nearest memory rows ``indices`` -> (Q,) float32 patch scores: their
    mean, as L2 unless ``squared``, each weighted by its row's weight (SoftPatch) when ``weights`` (M,)."""
    if not squared:
        distances = np.sqrt(distances)
    if weights is not None:
        distances = distances * weights[indices]
    return distances.mean(axis=1).astype(np.float32)


def anomaly_maps(patch_scores: np.ndarray, size: int, sigma: float = 4.0) -> np.ndarray:
    """(m, h, w) patch scores -> (m, size, size) float32: bilinear upsampling, then Gaussian blur."""
    grid = torch.from_numpy(np.array(patch_scores, dtype=np.float32))[:, None]  # a copy: inputs may be read-only
    maps = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    if sigma > 0:
        maps = np.stack([gaussian_filter(m, sigma=sigma) for m in maps]) if len(maps) else maps
    return maps.astype(np.float32)
