"""Patch-wise Local Outlier Factor (SoftPatch's denoiser).

For each grid location separately, LOF is fitted on the features found at that
location across all training images; a patch is an outlier when it differs
from the same location of the other images.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import LocalOutlierFactor
from tqdm import tqdm


def patchwise_lof_scores(features: np.ndarray, k: int = 6, progress: bool = False) -> np.ndarray:
    """LOF score of every patch, (n_images, n_locations, dim) -> (n_images, n_locations) float32.

    Scores are >= about 1, larger = more outlying. With fewer than two images
    there is nothing to compare: every score is 1. ``k`` is capped at n - 1.
    """
    features = np.asarray(features)
    if features.ndim != 3:
        raise ValueError(f"features: expected (n_images, n_locations, dim), got shape {features.shape}")
    n_images, n_locations, _ = features.shape
    scores = np.ones((n_images, n_locations), dtype=np.float32)
    neighbours = min(k, n_images - 1)
    if neighbours < 1:
        return scores
    model = LocalOutlierFactor(n_neighbors=neighbours, metric="euclidean", algorithm="brute")
    for location in tqdm(range(n_locations), desc="patch LOF", disable=not progress, leave=False):
        model.fit(features[:, location, :])
        scores[:, location] = -model.negative_outlier_factor_
    return scores


def inlier_mask(scores: np.ndarray, drop: float = 0.15) -> np.ndarray:
    """Keep patches whose score is below the (1 - drop) quantile of all scores.

    scores: any shape -> bool mask of the same shape. When ties at the
    quantile would leave nothing (many equal scores), only scores strictly
    above the quantile are dropped.
    """
    scores = np.asarray(scores)
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop={drop}: must be in [0, 1)")
    if drop == 0.0:
        return np.ones(scores.shape, dtype=bool)
    threshold = np.quantile(scores, 1.0 - drop)
    keep = scores < threshold
    return keep if keep.any() else scores <= threshold
