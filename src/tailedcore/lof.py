"""Patch-wise Local Outlier Factor (SoftPatch's denoiser).

For each grid location separately, LOF is fitted on the features found at that
location across all training images; a patch is an outlier when it differs
from the same location of the other images.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import LocalOutlierFactor
from tqdm import tqdm

from .store import ArrayFile
from .timing import trim_heap

# Locations read at once: bounds what a block of the (n, P, d) input takes in RAM.
_BLOCK_BYTES = 64 * 2**20


def _location_scores(features, locations: range, neighbours: int, progress: bool) -> np.ndarray:
    """LOF scores (n_images, len(locations)) float32 of the given grid locations of (n, P, dim) features
    (an array, or an ArrayFile read one block of locations at a time)."""
    model = LocalOutlierFactor(n_neighbors=neighbours, metric="euclidean", algorithm="brute")
    n_images, _, dim = features.shape
    step = max(1, _BLOCK_BYTES // (4 * n_images * dim))
    scores = np.empty((n_images, len(locations)), dtype=np.float32)
    bar = tqdm(total=len(locations), desc="patch LOF", disable=not progress, leave=False)
    for lo in range(locations.start, locations.stop, step):
        hi = min(lo + step, locations.stop)
        block = features[:, lo:hi, :]
        for location in range(hi - lo):
            model.fit(block[:, location, :])
            scores[:, lo - locations.start + location] = -model.negative_outlier_factor_
        bar.update(hi - lo)
        trim_heap()
    bar.close()
    return scores


def patchwise_lof_scores(features, k: int = 6, progress: bool = False, engine=None) -> np.ndarray:
    """LOF score of every patch, (n_images, n_locations, dim) -> (n_images, n_locations) float32.

    ``features``: an array, or an ArrayFile (store.py) that is read in blocks
    of locations. Scores are >= about 1, larger = more outlying. With fewer
    than two images there is nothing to compare: every score is 1. ``k`` is
    capped at n - 1. With an ``engine`` (engine.py) of several workers, blocks
    of grid locations run as separate tasks; each location's LOF is
    independent, so the scores are the same.
    """
    if not isinstance(features, ArrayFile):
        features = np.asarray(features)
    if features.ndim != 3:
        raise ValueError(f"features: expected (n_images, n_locations, dim), got shape {features.shape}")
    n_images, n_locations, _ = features.shape
    neighbours = min(k, n_images - 1)
    if neighbours < 1:
        return np.ones((n_images, n_locations), dtype=np.float32)
    if engine is None or engine.workers == 1:
        return _location_scores(features, range(n_locations), neighbours, progress)
    shared = engine.put(features)
    edges = np.linspace(0, n_locations, min(n_locations, 4 * engine.workers) + 1).round().astype(int)
    blocks = engine.map(_location_scores, [(shared, range(lo, hi), neighbours, False)
                                           for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo])
    return np.concatenate(blocks, axis=1)


def image_relative(scores: np.ndarray) -> np.ndarray:
    """Each patch's LOF score over the median score of its image: (n_images, n_locations) -> the same shape.

    An image of another product differs from the other images at almost every
    location, so its scores are high all over and its relative scores stay near
    1; a defect differs in one region, which stays high against the image's median.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected (n_images, n_locations), got shape {scores.shape}")
    return scores / np.maximum(np.median(scores, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def inlier_mask(scores: np.ndarray, drop: float = 0.15) -> np.ndarray:
    """Keep patches whose score is below the (1 - drop) quantile of all scores.

    scores: any shape -> bool mask of the same shape. When ties at the
    quantile would leave nothing (many equal scores), only scores strictly
    above the quantile are dropped.
    """
    scores = np.asarray(scores)
    if _drops_nothing(drop):
        return np.ones(scores.shape, dtype=bool)
    threshold = np.quantile(scores, 1.0 - drop)
    keep = scores < threshold
    return keep if keep.any() else scores <= threshold


def _drops_nothing(drop: float) -> bool:
    """Check a drop share (in [0, 1)); True when it is 0."""
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop={drop}: must be in [0, 1)")
    return drop == 0.0


def tukey_fence(values: np.ndarray, factor: float) -> float:
    """Q3 + factor x IQR of ``values`` (1.5: Tukey's upper fence; 3: his far-out one)."""
    lower, upper = np.quantile(values, [0.25, 0.75])
    return float(upper + factor * (upper - lower))


def _inner_fence(scores: np.ndarray, drop: float) -> float:
    """Tukey's upper fence of the scores, never below their (1 - drop) quantile (so at most ``drop`` is above)."""
    return max(tukey_fence(scores, 1.5), float(np.quantile(scores, 1.0 - drop)))


def fence_inlier_mask(scores: np.ndarray, drop: float = 0.15) -> np.ndarray:
    """Keep patches whose score is at most the upper Tukey fence of the scores (Q3 + 1.5 IQR), dropping at
    most the ``drop`` share.

    scores: any shape -> bool mask of the same shape. The share dropped follows
    the scores' own distribution: a group whose scores are alike except for a
    few outliers drops only those; a varied group has a wide IQR and a high fence.
    """
    scores = np.asarray(scores)
    if _drops_nothing(drop):
        return np.ones(scores.shape, dtype=bool)
    return scores <= _inner_fence(scores, drop)


def gated_inlier_mask(scores: np.ndarray, drop: float = 0.15, far_out: bool = True) -> np.ndarray:
    """Drop a patch above the upper Tukey fence (Q3 + 1.5 IQR) only in an outlying image, one whose share of
    such patches is itself above the upper fence of the images' shares; with ``far_out``, also any patch above
    the far-out fence (Q3 + 3 IQR). Never more than the ``drop`` share.

    scores: (n_images, P) -> bool keep mask (n_images, P). A defective image has many patches above the fence
    in its defect's region; a clean image of a varied product has a few scattered ones, rare normal patches
    that the fence alone would drop with the noise.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected (n_images, n_locations), got shape {scores.shape}")
    if _drops_nothing(drop):
        return np.ones(scores.shape, dtype=bool)
    inner = _inner_fence(scores, drop)
    above = scores > inner
    share = above.mean(axis=1)
    outlying = share > tukey_fence(share, 1.5)
    dropped = above & outlying[:, None]
    if far_out:
        dropped |= scores > max(tukey_fence(scores, 3.0), inner)
    return ~dropped


def fence_shares(scores: np.ndarray, drop: float) -> np.ndarray:
    """Each image's share of patches above the upper Tukey fence of all the scores (never below their
    (1 - ``drop``) quantile), (n_images, P) -> (n_images,) float64 in [0, 1]."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected (n_images, n_locations), got shape {scores.shape}")
    return (scores > _inner_fence(scores, drop)).mean(axis=1)
