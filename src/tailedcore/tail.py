"""TailSampler: estimate each training image's class size and pick the tail images.

Nothing here knows class labels. From image embeddings alone:
1. per row of the cosine-similarity matrix, a threshold from the symmetric
   ("trim_min") assumption; 2. each row's count of images above its threshold;
3. a mode vote of those counts per image (its class size); 4. group sizes;
5. ``max_k`` = min(elbow, 15% rule) over the group sizes; tail = size <= max_k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"embeddings: expected a non-empty (n, dim) array, got shape {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings: contain NaN or infinite values")
    return embeddings


def cosine_similarity(embeddings: np.ndarray) -> np.ndarray:
    """(n, dim) -> (n, n) float64 cosine similarities (zero rows stay zero)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, 1e-12)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def row_thresholds(similarity: np.ndarray, keep: float = 0.85, quantize: bool = True) -> np.ndarray:
    """Per-row membership thresholds t_i, (n, n) -> (n,).

    m_i = min_j S_ij; h_i = cos(arccos(m_i) / 2); candidates = scores above
    h_i, sorted ascending; t_i keeps the most similar ``keep`` share of them:
    C[len - floor(keep * len)] (C[0] when that share is empty). With
    ``quantize`` the scores are first truncated to multiples of 1/n, as in the
    reference code. A row with no candidate (all scores equal) gets t_i = m_i.
    """
    n = len(similarity)
    scores = np.trunc(similarity * n) / n if quantize else similarity
    scores = np.sort(scores, axis=1)
    minimum = scores[:, 0]
    half_angle = np.cos(np.arccos(np.clip(minimum, -1.0, 1.0)) / 2.0)
    n_candidates = (scores > half_angle[:, None]).sum(axis=1)
    n_kept = np.floor(keep * n_candidates).astype(np.int64)
    # Candidates are the last n_candidates sorted scores; C[j] = scores[n - n_candidates + j].
    index = np.where(n_kept > 0, n - n_kept, n - n_candidates)
    thresholds = scores[np.arange(n), np.minimum(index, n - 1)]
    return np.where(n_candidates > 0, thresholds, minimum)


def estimate_class_sizes(embeddings: np.ndarray, keep: float = 0.85, quantize: bool = True) -> np.ndarray:
    """Estimated class size of each image, (n, dim) -> (n,) int64, each in 1..n.

    Membership M_ij = S_ij >= t_i; row counts c_i = sum_j M_ij; the class size
    of image j is the most frequent c_i over the rows i with M_ij (the smallest
    such value on ties).
    """
    similarity = cosine_similarity(_check_embeddings(embeddings))
    thresholds = row_thresholds(similarity, keep, quantize)
    members = similarity >= thresholds[:, None]
    members[np.diag_indices_from(members)] = True  # an image always counts itself
    counts = members.sum(axis=1)
    sizes = np.empty(len(counts), dtype=np.int64)
    for j in range(len(counts)):
        sizes[j] = np.argmax(np.bincount(counts[members[:, j]]))
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


def tail_sampler(embeddings: np.ndarray, keep: float = 0.85, share: float = 0.15,
                 quantize: bool = True) -> TailEstimate:
    """Run TailSampler on (n, dim) image embeddings."""
    sizes = estimate_class_sizes(embeddings, keep, quantize)
    groups = group_sizes(sizes)
    limit = max_k(groups, share)
    return TailEstimate(sizes, groups, limit, np.flatnonzero(sizes <= limit))


def select_tail(embeddings: np.ndarray, keep: float = 0.85, share: float = 0.15, quantize: bool = True) -> np.ndarray:
    """Indices (sorted, int64) of the training images estimated to belong to tail classes."""
    return tail_sampler(embeddings, keep, share, quantize).tail_indices
