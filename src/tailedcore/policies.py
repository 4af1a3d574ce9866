"""Memory-bank policies: how PatchCore, SoftPatch and TailedCore build their memory.

Each policy is a short function of the training features built from the same
blocks: ``coreset`` (sampling), ``patchwise_lof_scores`` / ``inlier_mask``
(lof) and ``tail_sampler`` (tail) plus the rotated views (views).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .lof import inlier_mask, patchwise_lof_scores
from .memory import MemoryBank
from .profiling import Profiler
from .sampling import greedy_coreset, two_round_coreset
from .store import FeatureStore, ImageSubset
from .tail import LinkageTailSampler, PaperTailSampler, TailInputs


@dataclass
class FeatureSet:
    """Patch features of a set of images.

    patches: (n_images * P, D) rows on disk (a FeatureStore or an ImageSubset of
    one; only ``gather`` is used), image i at rows [i*P, (i+1)*P);
    projected: (n_images, P, d) float32, the same rows through the fixed
    random projection (used for LOF and the coreset).
    """

    patches: FeatureStore | ImageSubset
    projected: np.ndarray


@dataclass
class TrainingFeatures(FeatureSet):
    """The training set: patch features, image embeddings (n_images, E), mean patch features
    (n_images, D) and a view maker.

    ``views(indices)`` returns the FeatureSet of all rotated/flipped views of
    the given training images; ``profiler`` times the policy's stages.
    """

    embeddings: np.ndarray
    mean_patches: np.ndarray
    views: Callable[[np.ndarray], FeatureSet]
    views_per_image: int = 47
    profiler: Profiler = field(default_factory=Profiler)


@dataclass
class PolicyResult:
    memory: MemoryBank
    diagnostics: dict


def coreset(rows: np.ndarray, ratio: float, rng: np.random.Generator, profiler: Profiler,
            progress: bool = False) -> np.ndarray:
    """Greedy coreset of ``ratio`` x len(rows) projected rows (at least one), from a random start."""
    if len(rows) == 0:
        return np.empty(0, dtype=np.int64)
    count = max(1, int(len(rows) * ratio))
    with profiler.stage("coreset"):
        return greedy_coreset(rows, count, start=int(rng.integers(len(rows))), progress=progress)


def _gather(store: FeatureStore, rows: np.ndarray, profiler: Profiler) -> np.ndarray:
    with profiler.stage("memory gather"):
        return store.gather(rows)


def _denoised_coreset(train: TrainingFeatures, ratio: float, lof_k: int, lof_drop: float,
                      rng: np.random.Generator, progress: bool):
    """LOF-filter all patches, then coreset the inliers -> (row indices, LOF scores (n, P), inlier mask)."""
    with train.profiler.stage("lof"):
        scores = patchwise_lof_scores(train.projected, lof_k, progress)
        keep = inlier_mask(scores, lof_drop)
    inliers = np.flatnonzero(keep.ravel())
    rows = train.projected.reshape(-1, train.projected.shape[-1])
    return inliers[coreset(rows[inliers], ratio, rng, train.profiler, progress)], scores, keep


def patchcore(train: TrainingFeatures, rng: np.random.Generator, coreset_ratio: float = 0.1,
              progress: bool = False) -> PolicyResult:
    """Memory = greedy coreset of all training patches."""
    rows = train.projected.reshape(-1, train.projected.shape[-1])
    picks = coreset(rows, coreset_ratio, rng, train.profiler, progress)
    info = {"coreset": len(picks), "patches": len(rows)}
    memory = MemoryBank(_gather(train.patches, picks, train.profiler), info=info)
    return PolicyResult(memory, {})


def softpatch(train: TrainingFeatures, rng: np.random.Generator, coreset_ratio: float = 0.1, lof_k: int = 6,
              lof_drop: float = 0.15, progress: bool = False) -> PolicyResult:
    """Memory = coreset of LOF inliers; each memory feature is weighted by its LOF score."""
    picks, scores, keep = _denoised_coreset(train, coreset_ratio, lof_k, lof_drop, rng, progress)
    memory = MemoryBank(
        _gather(train.patches, picks, train.profiler),
        weights=scores.ravel()[picks],
        info={"coreset": len(picks), "inliers": int(keep.sum()), "patches": keep.size},
    )
    return PolicyResult(memory, {"dropped_share": 1.0 - keep.mean(axis=1)})


TAIL_CORESETS = ("joint", "per-image", "two-round")


def _tail_coreset(tail_rows: np.ndarray, n_images: int, rows_per_image: int, views_per_image: int, scope: str,
                  ratio: float, rng: np.random.Generator, profiler: Profiler, progress: bool) -> np.ndarray:
    """Coreset picks (row indices) of the tail rows: the images' own patches, then all their views.

    tail_rows: (n_images * rows_per_image * (1 + views_per_image), d), own
    patches of image j at [j * R, (j + 1) * R), its views at
    n_images * R + [j * V * R, (j + 1) * V * R). scope "joint" (the paper):
    one coreset over every row; "per-image": one coreset per image over its
    own patches and views; "two-round": per-image coresets (oversampled), then
    coresets over the union of blocks of images (sampling.two_round_coreset).
    Both grow linearly with the tail instead of quadratically.
    """
    if scope == "joint":
        return coreset(tail_rows, ratio, rng, profiler, progress)
    own_start, view_rows = n_images * rows_per_image, views_per_image * rows_per_image
    images = [np.concatenate([np.arange(image * rows_per_image, (image + 1) * rows_per_image),
                              own_start + np.arange(image * view_rows, (image + 1) * view_rows)])
              for image in range(n_images)]
    if scope == "two-round":
        with profiler.stage("coreset"):
            return two_round_coreset(tail_rows, images, ratio, rng, progress=progress)
    return np.concatenate([rows[coreset(tail_rows[rows], ratio, rng, profiler)] for rows in images])


def tailedcore(train: TrainingFeatures, rng: np.random.Generator, coreset_ratio: float = 0.1, lof_k: int = 6,
               lof_drop: float = 0.15, tail_estimator: PaperTailSampler | LinkageTailSampler | None = None,
               max_tail_rows: int | None = None, tail_coreset: str = "joint", progress: bool = False) -> PolicyResult:
    """Memory = coreset(tail images + their views) followed by coreset(LOF inliers of all images).

    ``tail_estimator`` picks the tail images (default: the paper's TailSampler).
    ``tail_coreset``: "joint" (the paper), "per-image" or "two-round" (see
    _tail_coreset). A joint coreset over more than ``max_tail_rows`` patch rows
    (None = no limit) becomes "two-round", so its time stays linear in the tail.
    """
    if tail_coreset not in TAIL_CORESETS:
        raise ValueError(f"tail_coreset='{tail_coreset}': choose from {', '.join(TAIL_CORESETS)}")
    estimator = tail_estimator or PaperTailSampler()
    with train.profiler.stage("tail sampler"):
        estimate = estimator.estimate(TailInputs(train.embeddings, train.mean_patches))
    tail = estimate.tail_indices
    tail_patches = len(tail) * (1 + train.views_per_image) * train.projected.shape[1]
    if tail_coreset == "joint" and max_tail_rows is not None and tail_patches > max_tail_rows:
        tail_coreset = "two-round"
    parts, info = [], {"tail_images": len(tail), "max_k": estimate.max_k, "tail_coreset": tail_coreset}
    if len(tail):
        with train.profiler.stage("tail views"):
            views = train.views(tail)
        dim, patches_per_image = train.projected.shape[-1], train.projected.shape[1]
        tail_rows = np.concatenate([train.projected[tail].reshape(-1, dim), views.projected.reshape(-1, dim)])
        picks = _tail_coreset(tail_rows, len(tail), patches_per_image, train.views_per_image, tail_coreset,
                              coreset_ratio, rng, train.profiler, progress)
        n_own = len(tail) * patches_per_image
        own = picks[picks < n_own]
        own_rows = tail[own // patches_per_image] * patches_per_image + own % patches_per_image
        parts += [_gather(train.patches, own_rows, train.profiler),
                  _gather(views.patches, picks[picks >= n_own] - n_own, train.profiler)]
        info["tail_memory"] = len(picks)
    head_picks, scores, keep = _denoised_coreset(train, coreset_ratio, lof_k, lof_drop, rng, progress)
    parts.append(_gather(train.patches, head_picks, train.profiler))
    info.update(head_memory=len(head_picks), inliers=int(keep.sum()), patches=keep.size)
    diagnostics = {
        "class_sizes": estimate.class_sizes,
        "groups": estimate.groups,
        "max_k": estimate.max_k,
        "tail_indices": tail,
        "dropped_share": 1.0 - keep.mean(axis=1),
    }
    return PolicyResult(MemoryBank(np.concatenate(parts), info=info), diagnostics)
