"""Tail estimators: estimate each training image's class size and pick the tail images.

Nothing here knows class labels. Two estimators share one interface
(``estimate(TailInputs) -> TailEstimate``), chosen by name in
``TAIL_ESTIMATORS``:

``paper`` (TailSampler, as published), from image embeddings alone:
1. per row of the cosine-similarity matrix, a threshold from the symmetric
   ("trim_min") assumption; 2. each row's count of images above its threshold;
3. a mode vote of those counts per image (its class size); 4. group sizes;
5. ``max_k`` = min(elbow, 15% rule) over the group sizes; tail = size <= max_k.

``linkage``: classes are the clusters of single-linkage clustering, cut at a
cosine distance (the connected parts of the graph of closer pairs, found a
block of rows at a time), over the image embedding and the image's mean patch feature;
class size = cluster size; ``max_k`` = min(elbow, 15% rule, ``max_tail_class``)
over the cluster sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .params import Interval, OneOf, Params, registered, setting

# Rows of a similarity or distance block: bounds the memory of the (block, n) float64 arrays.
_BLOCK_BYTES = 64 * 2**20


def _rows_per_block(n: int) -> int:
    """Rows of an (rows, n) float64 block of distances or similarities that fit in _BLOCK_BYTES."""
    return max(1, _BLOCK_BYTES // (8 * n))


def _check_embeddings(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"{name}: expected a non-empty (n, dim) array, got shape {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise ValueError(f"{name}: contain NaN or infinite values")
    return embeddings


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """(n, dim) -> (n, dim) float64 rows of length 1 (zero rows stay zero)."""
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def cosine_similarity(unit_a: np.ndarray, unit_b: np.ndarray) -> np.ndarray:
    """(a, dim), (b, dim) unit rows -> (a, b) float64 cosine similarities."""
    return np.clip(unit_a @ unit_b.T, -1.0, 1.0)


def row_thresholds(similarity: np.ndarray, keep: float = 0.85, quantize: bool = True) -> np.ndarray:
    """Per-row membership thresholds t_i, (rows, n) similarities of some images to all n -> (rows,).

    m_i = min_j S_ij; h_i = cos(arccos(m_i) / 2); candidates = scores above
    h_i, sorted ascending; t_i keeps the most similar ``keep`` share of them:
    C[len - floor(keep * len)] (C[0] when that share is empty). With
    ``quantize`` the scores are first truncated to multiples of 1/n, as in the
    reference code. A row with no candidate (all scores equal) gets t_i = m_i.
    """
    n = similarity.shape[1]
    scores = np.trunc(similarity * n) / n if quantize else similarity
    scores = np.sort(scores, axis=1)
    minimum = scores[:, 0]
    half_angle = np.cos(np.arccos(np.clip(minimum, -1.0, 1.0)) / 2.0)
    n_candidates = (scores > half_angle[:, None]).sum(axis=1)
    n_kept = np.floor(keep * n_candidates).astype(np.int64)
    # Candidates are the last n_candidates sorted scores; C[j] = scores[n - n_candidates + j].
    index = np.where(n_kept > 0, n - n_kept, n - n_candidates)
    thresholds = scores[np.arange(len(scores)), np.minimum(index, n - 1)]
    return np.where(n_candidates > 0, thresholds, minimum)


def estimate_class_sizes(embeddings: np.ndarray, keep: float = 0.85, quantize: bool = True) -> np.ndarray:
    """Estimated class size of each image, (n, dim) -> (n,) int64, each in 1..n.

    Membership M_ij = S_ij >= t_i; row counts c_i = sum_j M_ij; the class size
    of image j is the most frequent c_i over the rows i with M_ij (the smallest
    such value on ties). Similarities are computed a block of rows (then of
    columns) at a time, so memory is O(block x n), never n x n.
    """
    unit = _unit_rows(_check_embeddings(embeddings))
    n = len(unit)
    step = _rows_per_block(n)
    blocks = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    thresholds, counts = np.empty(n), np.empty(n, dtype=np.int64)
    for lo, hi in blocks:  # rows i: t_i and c_i
        similarity = cosine_similarity(unit[lo:hi], unit)
        thresholds[lo:hi] = row_thresholds(similarity, keep, quantize)
        members = similarity >= thresholds[lo:hi, None]
        members[np.arange(hi - lo), np.arange(lo, hi)] = True  # an image always counts itself
        counts[lo:hi] = members.sum(axis=1)
    sizes = np.empty(n, dtype=np.int64)
    for lo, hi in blocks:  # columns j: the mode of c_i over the rows i with M_ij
        members = cosine_similarity(unit, unit[lo:hi]) >= thresholds[:, None]
        members[np.arange(lo, hi), np.arange(hi - lo)] = True
        for column in range(hi - lo):
            sizes[lo + column] = np.argmax(np.bincount(counts[members[:, column]]))
    return sizes


def group_sizes(class_sizes: np.ndarray) -> np.ndarray:
    """Turn per-image class sizes into sizes of groups (classes), sorted descending.

    Sort the sizes ascending (each at least 1); while images remain: s = the
    smallest remaining size; if fewer than s images remain, add them to the
    last group and stop; else the group size is round(mean of the next s
    sizes), capped by what remains, and that many images are dropped.
    """
    remaining = np.sort(np.maximum(np.round(np.asarray(class_sizes, dtype=np.float64)), 1)).astype(np.int64)
    groups: list[int] = []
    while remaining.size:
        smallest = int(remaining[0])
        if remaining.size < smallest:
            if groups:
                groups[-1] += remaining.size
            else:
                groups.append(remaining.size)
            break
        size = min(int(np.round(remaining[:smallest].mean())), remaining.size)
        groups.append(size)
        remaining = remaining[size:]
    return np.sort(np.asarray(groups, dtype=np.int64))[::-1]


def elbow(values: np.ndarray) -> int:
    """The value at the elbow of ``values`` sorted descending.

    Points (index, value); the elbow is the point farthest (perpendicular
    distance) from the line through the first and last points, first on ties.
    A flat or single-point curve has its first value as elbow.
    """
    values = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    if values.size == 0:
        raise ValueError("values: empty")
    dx, dy = len(values) - 1.0, values[-1] - values[0]
    length = np.hypot(dx, dy)
    if length == 0:
        return int(values[0])
    index = np.arange(len(values))
    distance = np.abs(dy * index - dx * (values - values[0])) / length
    return int(values[int(np.argmax(distance))])


def share_limit(groups: np.ndarray, share: float = 0.15) -> int:
    """Largest group size among the smallest groups that together hold at most ``share`` of images.

    When even the smallest group holds more, its size is returned.
    """
    groups = np.sort(np.asarray(groups, dtype=np.int64))  # ascending
    if groups.size == 0:
        raise ValueError("groups: empty")
    budget = int(groups.sum() * share)
    n_small = int(np.searchsorted(np.cumsum(groups), budget, side="right"))
    return int(groups[max(n_small, 1) - 1])


def max_k(groups: np.ndarray, share: float = 0.15) -> int:
    """Largest class size still counted as tail: min(elbow, 15% rule)."""
    return min(elbow(groups), share_limit(groups, share))


@dataclass
class TailEstimate:
    """What TailSampler found: per-image class sizes (n,), group sizes, max_k, tail indices."""

    class_sizes: np.ndarray
    groups: np.ndarray
    max_k: int
    tail_indices: np.ndarray

    def of_images(self, images: np.ndarray) -> TailEstimate:
        """The estimate of some of the images, ``images`` (m,) int64 in ascending order: their class sizes and
        the tail as counted over all images."""
        return TailEstimate(self.class_sizes[images], self.groups, self.max_k,
                            np.flatnonzero(np.isin(images, self.tail_indices)))


def tail_sampler(embeddings: np.ndarray, keep: float = 0.85, share: float = 0.15,
                 quantize: bool = True) -> TailEstimate:
    """Run TailSampler on (n, dim) image embeddings."""
    sizes = estimate_class_sizes(embeddings, keep, quantize)
    groups = group_sizes(sizes)
    limit = max_k(groups, share)
    return TailEstimate(sizes, groups, limit, np.flatnonzero(sizes <= limit))


@dataclass
class TailInputs:
    """What a tail estimator sees of n training images.

    embeddings: (n, E) float32 backbone image embeddings (global average pool
    of the last stage); mean_patches: (n, D) float32 mean of each image's patch
    features (the PatchCore features, before any projection).
    """

    embeddings: np.ndarray
    mean_patches: np.ndarray


@registered
@dataclass(frozen=True)
class PaperTailSampler(Params):
    """The published TailSampler on the image embeddings (keep: trim share; share: the 15% rule)."""

    keep: float = setting(0.85, "TailSampler trim share")
    share: float = setting(0.15, "15% rule of max K")
    quantize: bool = setting(True, "similarities truncated to multiples of 1/n (the reference code)", option=None)

    name: ClassVar[str] = "paper"
    constraints: ClassVar[dict] = {"keep": Interval(float, 0.0, 1.0, "right"),
                                   "share": Interval(float, 0.0, 1.0, "neither"), "quantize": OneOf((True, False))}

    def estimate(self, inputs: TailInputs) -> TailEstimate:
        self.check()
        return tail_sampler(inputs.embeddings, self.keep, self.share, self.quantize)


LINKAGE_FEATURES = ("both", "embedding", "patches")


@registered
@dataclass(frozen=True)
class LinkageTailSampler(Params):
    """Class sizes from single-linkage clusters of the images.

    The distance between two images is the cosine distance of their
    embeddings and of their mean patch features, averaged (``features``
    "both"; or one of the two). Clusters are the connected parts left when
    every link longer than ``distance`` is cut, so an image joins a class
    when it is close to any one of its images: a local defect moves an image
    a little, never as far as another product. Class size = cluster size;
    ``max_k`` = min(elbow, ``share`` rule, ``max_tail_class``) over the
    cluster sizes (None: no cap, the paper's rule alone). With ``core`` > 1 a
    link counts as the longest of its length and its two ends' distances to
    their ``core``-th nearest image (HDBSCAN's mutual reachability distance):
    an image joins a cluster only when ``core`` images lie within the cut, so
    one close image of another product no longer draws a tail image in.
    """

    distance: float = setting(0.3, "cosine distance that cuts linkage clusters")
    features: str = setting("both", "what the distance is made of: both, embedding or patches", option=None)
    share: float = setting(0.15, "15% rule of max K")
    max_tail_class: int | None = setting(19, "largest class size counted as tail", option="--max-tail-class")
    core: int = setting(1, "a link counts as the longest of its length and its ends' distances to their core-th "
                           "nearest image (1: plain single linkage)", option="--tail-core")

    name: ClassVar[str] = "linkage"
    constraints: ClassVar[dict] = {"distance": Interval(float, 0.0, 2.0, "neither"),
                                   "features": OneOf(LINKAGE_FEATURES),
                                   "share": Interval(float, 0.0, 1.0, "neither"),
                                   "max_tail_class": Interval(int, 1, none_ok=True), "core": Interval(int, 1)}

    def _unit_rows(self, inputs: TailInputs) -> list[np.ndarray]:
        """The (n, ·) float64 unit-length rows of each feature used."""
        parts = {"embedding": ("embeddings", inputs.embeddings), "patches": ("mean_patches", inputs.mean_patches)}
        used = ["embedding", "patches"] if self.features == "both" else [self.features]
        return [_unit_rows(_check_embeddings(parts[name][1], parts[name][0])) for name in used]

    @staticmethod
    def _cross(units_a: list[np.ndarray], units_b: list[np.ndarray]) -> np.ndarray:
        """(a, b) float64 cosine distances of unit rows, averaged over the features.

        1 - cos = |u - v|^2 / 2 on unit rows; an all-zero row is at distance 0.5 from every other. The
        squares come from one matrix product, |u|^2 + |v|^2 - 2 u.v (about ten times faster than differences).
        """
        total = 0.0
        for a, b in zip(units_a, units_b):
            squares_a, squares_b = (a * a).sum(axis=1), (b * b).sum(axis=1)
            total = total + np.maximum(squares_a[:, None] + squares_b[None, :] - 2.0 * a @ b.T, 0.0) / 2
        return total / len(units_a)

    def distances(self, units: list[np.ndarray], lo: int, hi: int) -> np.ndarray:
        """(hi - lo, n) float64 distances of images lo..hi-1 to every image (``units``: ``_unit_rows``)."""
        return self._cross([unit[lo:hi] for unit in units], units)

    def distances_between(self, inputs: TailInputs, others: TailInputs) -> np.ndarray:
        """(m, n) float64 distances of the m images of ``inputs`` to the n of ``others``."""
        return self._cross(self._unit_rows(inputs), self._unit_rows(others))

    def clusters(self, inputs: TailInputs) -> np.ndarray:
        """(n,) int64 cluster of each image: the connected parts of the graph whose edges are the pairs at
        most ``distance`` apart (single linkage cut at ``distance``).

        Distances are computed a block of rows at a time, and the edges found so
        far are replaced after each block by one edge from every image to the
        first image of its part, so memory is O(block x n), never n x n.
        """
        units = self._unit_rows(inputs)
        n = len(units[0])
        step = _rows_per_block(n)
        core = self.core_distances(units) if min(self.core, n - 1) > 1 else None
        first_of_part = np.arange(n)
        for lo in range(0, n, step):
            block = self.distances(units, lo, min(lo + step, n))
            if core is not None:
                block = np.maximum(block, np.maximum(core[lo : lo + step, None], core[None, :]))
            rows, cols = np.nonzero(block <= self.distance)
            edges = (np.concatenate([np.arange(n), rows + lo]), np.concatenate([first_of_part, cols]))
            graph = coo_matrix((np.ones(len(edges[0]), dtype=np.int8), edges), shape=(n, n))
            _, part = connected_components(graph, directed=False)
            first_of_part = np.unique(part, return_index=True)[1][part]
        return np.unique(first_of_part, return_inverse=True)[1].astype(np.int64)

    def core_distances(self, units: list[np.ndarray]) -> np.ndarray:
        """(n,) float64: each image's distance to its ``core``-th nearest other image (at most the n - 1-th)."""
        n = len(units[0])
        rank = min(self.core, n - 1) - 1
        step = _rows_per_block(n)
        core = np.empty(n)
        for lo in range(0, n, step):
            block = self.distances(units, lo, min(lo + step, n))
            block[np.arange(len(block)), lo + np.arange(len(block))] = np.inf  # not its own neighbour
            core[lo : lo + len(block)] = np.partition(block, rank, axis=1)[:, rank]
        return core

    def estimate(self, inputs: TailInputs) -> TailEstimate:
        self.check()
        n = len(_check_embeddings(inputs.embeddings))
        if len(inputs.mean_patches) != n:
            raise ValueError(f"mean_patches: {len(inputs.mean_patches)} rows for {n} embeddings")
        return self.estimate_from_clusters(self.clusters(inputs))

    def estimate_from_clusters(self, clusters: np.ndarray) -> TailEstimate:
        """The estimate of images whose clusters (n,) int64 are known (``clusters``): where the tail is decided,
        here and in a fit (from the clusters of its products)."""
        _, cluster, counts = np.unique(clusters, return_inverse=True, return_counts=True)
        sizes = counts[cluster].astype(np.int64)
        groups = np.sort(counts).astype(np.int64)[::-1]
        limit = max_k(groups, self.share)
        if self.max_tail_class is not None:
            limit = min(limit, self.max_tail_class)
        return TailEstimate(sizes, groups, limit, np.flatnonzero(sizes <= limit))


TAIL_ESTIMATORS = {cls.name: cls for cls in (PaperTailSampler, LinkageTailSampler)}


def make_tail_estimator(name: str, **params) -> PaperTailSampler | LinkageTailSampler:
    """The estimator registered as ``name``, with its own parameters."""
    if name not in TAIL_ESTIMATORS:
        raise ValueError(f"tail_estimator='{name}': choose from {', '.join(TAIL_ESTIMATORS)}")
    return TAIL_ESTIMATORS[name](**params)
