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

import threading
from collections.abc import Callable

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

SearchResult = tuple[np.ndarray, np.ndarray]  # squared distances (Q, k) float32, indices (Q, k) int64


class ExactSearch:
    """Exact k-NN by blocked matrix products. memory: (M, D) float32."""

    def __init__(self, memory: np.ndarray, memory_block: int = 8192, query_block: int = 8192):
        self.memory = torch.from_numpy(np.ascontiguousarray(memory, dtype=np.float32))
        self.norms = (self.memory * self.memory).sum(dim=1)
        self.memory_block, self.query_block = memory_block, query_block

    def _search_block(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        best_d = torch.full((len(queries), k), float("inf"))
        best_i = torch.zeros((len(queries), k), dtype=torch.int64)
        for start in range(0, len(self.memory), self.memory_block):
            block = self.memory[start : start + self.memory_block]
            partial = torch.addmm(self.norms[start : start + len(block)], queries, block.T, alpha=-2.0)
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
    def search_partial(self, queries: np.ndarray, k: int = 1) -> SearchResult:
        """k smallest |m|^2 - 2 q.m per query (the search before |q|^2 is added) and their indices."""
        queries_t = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        dists, indices = [], []
        for start in range(0, len(queries_t), self.query_block):
            d, i = self._search_block(queries_t[start : start + self.query_block], k)
            dists.append(d)
            indices.append(i)
        return torch.cat(dists).numpy(), torch.cat(indices).numpy()

    def search(self, queries: np.ndarray, k: int = 1) -> SearchResult:
        partial, indices = self.search_partial(queries, k)
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


def trained_ivf(memory: np.ndarray, nlist: int | None = None, seed: int = 0) -> faiss.IndexIVFFlat:
    """An empty faiss IVF-Flat index with its lists trained on memory (M, D) float32: by default about
    4 sqrt(M) lists, each trained on at least 39 points (faiss's minimum)."""
    nlist = nlist or max(1, min(4096, int(4 * np.sqrt(len(memory))), len(memory) // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(memory.shape[1]), memory.shape[1], nlist)
    index.cp.seed = seed
    index.train(memory)
    return index


class FaissSearch:
    """A faiss index over the memory; ``kind`` is flat, ivf or hnsw.

    An approximate index can come back empty-handed for a query (IVF lists
    probed are empty): those queries are answered by exact search.
    """

    def __init__(self, memory: np.ndarray, kind: str = "flat", nlist: int | None = None, nprobe: int = 8,
                 hnsw_m: int = 32, ef_search: int = 64, seed: int = 0):
        memory = np.ascontiguousarray(memory, dtype=np.float32)
        dim = memory.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatL2(dim)
        elif kind == "ivf":
            index = trained_ivf(memory, nlist, seed)
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


class BatchedIVFSearch:
    """IVF search with the scan done list by list: the inverted lists of ``trained_ivf`` and the
    ``nprobe`` nearest lists of each query as faiss finds them (so the candidates of ``ivf``), but
    each list is compared with all the queries of the batch that probe it in one matrix product,
    where faiss scans query by query. memory: (M, D) float32.

    Queries whose probed lists hold fewer than k rows are answered by exact search.
    """

    def __init__(self, memory: np.ndarray, nlist: int | None = None, nprobe: int = 8, seed: int = 0):
        memory = np.ascontiguousarray(memory, dtype=np.float32)
        self.trained = trained_ivf(memory, nlist, seed)  # owns the quantizer
        self.quantizer = self.trained.quantizer
        self.nprobe = min(nprobe, self.quantizer.ntotal)
        _, assignment = self.quantizer.search(memory, 1)
        order = np.argsort(assignment[:, 0], kind="stable")
        bounds = np.searchsorted(assignment[order, 0], np.arange(self.quantizer.ntotal + 1)).tolist()
        rows = torch.from_numpy(memory[order])
        self.lists = [rows[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.list_norms = [(block * block).sum(dim=1) for block in self.lists]
        self.list_ids = [torch.from_numpy(order[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.exact = ExactSearch(memory)

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int = 1) -> SearchResult:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, probes = self.quantizer.search(queries, self.nprobe)  # (Q, nprobe) list numbers
        queries_t = torch.from_numpy(queries)
        # One row per (query, probed list) pair, grouped by list.
        pair_lists = torch.from_numpy(probes.reshape(-1))
        pair_order = torch.argsort(pair_lists, stable=True)
        counts = torch.bincount(pair_lists, minlength=len(self.lists)).tolist()
        best_d = torch.full((len(pair_lists), k), float("inf"))
        best_i = torch.full((len(pair_lists), k), -1, dtype=torch.int64)
        for block, norms, ids, pairs in zip(self.lists, self.list_norms, self.list_ids,
                                            torch.split(pair_order, counts)):
            if not len(pairs) or not len(block):
                continue
            partial = torch.addmm(norms, queries_t[pairs // self.nprobe], block.T, alpha=-2.0)
            found = min(k, len(block))
            d, i = partial.min(dim=1, keepdim=True) if found == 1 else partial.topk(found, dim=1, largest=False)
            best_d[pairs, :found], best_i[pairs, :found] = d, ids[i]
        per_query_d = best_d.view(len(queries), self.nprobe * k)
        d, position = (per_query_d.min(dim=1, keepdim=True) if k == 1
                       else per_query_d.topk(k, dim=1, largest=False))
        distances = finish_distances(queries, d.numpy())
        indices = best_i.view(len(queries), self.nprobe * k).gather(1, position).numpy()
        missed = np.flatnonzero((indices < 0).any(axis=1))
        if missed.size:
            distances[missed], indices[missed] = self.exact.search(queries[missed], k)
        return distances, indices


SEARCHES: dict[str, Callable[..., ExactSearch | FaissSearch | BatchedIVFSearch]] = {
    "exact": ExactSearch,
    "flat": lambda memory, **kw: FaissSearch(memory, "flat", **kw),
    "ivf": lambda memory, **kw: FaissSearch(memory, "ivf", **kw),
    "hnsw": lambda memory, **kw: FaissSearch(memory, "hnsw", **kw),
    "ivf-batched": BatchedIVFSearch,
}


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
        if not self.squared:
            distances = np.sqrt(distances)
        if self.weights is not None:
            distances = distances * self.weights[indices]
        return distances.mean(axis=1).astype(np.float32).reshape(patches.shape[:-1])


def anomaly_maps(patch_scores: np.ndarray, size: int, sigma: float = 4.0) -> np.ndarray:
    """(m, h, w) patch scores -> (m, size, size) float32: bilinear upsampling, then Gaussian blur."""
    grid = torch.from_numpy(np.ascontiguousarray(patch_scores, dtype=np.float32))[:, None]
    maps = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    if sigma > 0:
        maps = np.stack([gaussian_filter(m, sigma=sigma) for m in maps]) if len(maps) else maps
    return maps.astype(np.float32)
