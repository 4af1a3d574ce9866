"""Memory-bank policies: how PatchCore, SoftPatch and TailedCore build their memory.

A policy is a parameter object (params.Params) made of the same building
blocks, each a parameter object too (blocks.py): ``Coreset``, ``LOFFilter``,
``Views``, ``TailCoreset``, and a tail estimator (tail.py). Its
``build(train, rng)`` turns the training features into a MemoryBank; the three
methods differ only in which blocks they compose.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .blocks import Coreset, LOFFilter, TailCoreset, Views
from .engine import LocalEngine, RayEngine
from .memory import MemoryBank
from .params import OneOf, Params, registered, setting
from .store import ArrayFile, ImageSubset, StoreChain
from .tail import TAIL_ESTIMATORS, LinkageTailSampler, PaperTailSampler, TailEstimate, TailInputs
from .timing import StageTimer


@dataclass
class FeatureSet:
    """Patch features of a set of images.

    patches: (n_images * P, D) rows on disk (an ArrayFile, StoreChain or ImageSubset of
    one; read by row indices, ``patches[rows]``), image i at rows [i*P, (i+1)*P);
    projected: (n_images, P, d) float32, the same rows through the fixed
    random projection (used for LOF and the coreset), on disk (an ArrayFile,
    read in pieces) or in RAM.
    """

    patches: ArrayFile | StoreChain | ImageSubset
    projected: ArrayFile | np.ndarray


@dataclass
class TrainingFeatures(FeatureSet):
    """The training set: patch features, image embeddings (n_images, E), mean patch features
    (n_images, D) and a view maker.

    ``views(indices)`` returns the FeatureSet of all rotated/flipped views of
    the given training images, ``views_per_image`` of each; ``timer`` times the policy's stages;
    ``engine`` runs their parallel parts (LOF blocks, coreset shards);
    ``products``: (n_images,) int64 product of each image (products.py), or None;
    ``tail``: the tail among these images as already found (the products' tail, counted before the
    calibration hold-out), or None: the policy's estimator finds it.
    """

    embeddings: np.ndarray
    mean_patches: np.ndarray
    views: Callable[[np.ndarray], FeatureSet]
    views_per_image: int
    timer: StageTimer = field(default_factory=StageTimer)
    engine: LocalEngine | RayEngine = field(default_factory=LocalEngine)
    products: np.ndarray | None = None
    tail: TailEstimate | None = None


@dataclass
class PolicyResult:
    """The memory bank, diagnostics of the build, and row_images: (k,) int64 training image each memory
    row came from (a view's rows: the image it was made of)."""

    memory: MemoryBank
    diagnostics: dict
    row_images: np.ndarray


# Memory rows gathered per call into the memory bank: the transient arrays of a call (its rows, 16 MB,
# and the store's 64 MB read blocks) stay small beside the memory bank itself.
_GATHER_ROWS = 4096


def _gather(sources: list[tuple[ArrayFile | StoreChain | ImageSubset, np.ndarray]], timer: StageTimer) -> np.ndarray:
    """The memory bank: the rows of each (store, row indices) source, in that order, as one (k, D) array.

    Filled in place, a block of sorted rows at a time, so the memory bank is the
    only large array made (no concatenation of its parts).
    """
    with timer.stage("memory gather"):
        memory = np.empty((sum(len(rows) for _, rows in sources), *sources[0][0].item_shape), dtype=np.float32)
        start = 0
        for store, rows in sources:
            order = np.argsort(rows, kind="stable")
            for first in range(0, len(order), _GATHER_ROWS):
                block = order[first : first + _GATHER_ROWS]
                memory[start + block] = store[rows[block]]
            start += len(rows)
        return memory


@dataclass(frozen=True)
class Policy(Params):
    """A memory-bank policy: ``build(train, rng)`` -> PolicyResult; ``method`` names it."""

    method: ClassVar[str] = ""

    def view_transforms(self) -> list[tuple[float, bool]]:
        """(angle, flip) of the views the policy asks for of each tail image (none by default)."""
        return []

    def build(self, train: TrainingFeatures, rng: np.random.Generator, progress: bool = False) -> PolicyResult:
        raise NotImplementedError


def _inlier_coreset(train: TrainingFeatures, coreset: Coreset, keep: np.ndarray, rng: np.random.Generator,
                    progress: bool) -> np.ndarray:
    """The coreset of the patches ``keep`` (n, P) bool marks (the LOF inliers) -> (m,) int64 patch rows."""
    rows = train.projected.reshape(-1, train.projected.shape[-1])
    return coreset.select(rows, rng, train.timer, progress, train.engine, subset=np.flatnonzero(keep.ravel()))


@registered
@dataclass(frozen=True)
class PatchCorePolicy(Policy):
    """Memory = greedy coreset of all training patches."""

    coreset: Coreset = Coreset()

    method: ClassVar[str] = "patchcore"

    def build(self, train, rng, progress=False):
        rows = train.projected.reshape(-1, train.projected.shape[-1])
        picks = self.coreset.select(rows, rng, train.timer, progress, train.engine)
        info = {"coreset": len(picks), "patches": len(rows)}
        return PolicyResult(MemoryBank(_gather([(train.patches, picks)], train.timer), info=info), {},
                            picks // train.projected.shape[1])


@registered
@dataclass(frozen=True)
class SoftPatchPolicy(Policy):
    """Memory = coreset of LOF inliers; each memory feature is weighted by its LOF score."""

    coreset: Coreset = Coreset()
    lof: LOFFilter = LOFFilter()

    method: ClassVar[str] = "softpatch"

    def build(self, train, rng, progress=False):
        scores, keep, _ = self.lof.apply(train.projected, train.timer, progress, train.engine, train.products)
        picks = _inlier_coreset(train, self.coreset, keep, rng, progress)
        memory = MemoryBank(
            _gather([(train.patches, picks)], train.timer),
            weights=scores.ravel()[picks],
            info={"coreset": len(picks), "inliers": int(keep.sum()), "patches": keep.size},
        )
        return PolicyResult(memory, {"dropped_share": 1.0 - keep.mean(axis=1)}, picks // keep.shape[1])


@registered
@dataclass(frozen=True)
class TailedCorePolicy(Policy):
    """Memory = coreset(tail images + their views) followed by coreset(LOF inliers of all images).

    ``tail`` picks the tail images: LinkageTailSampler (default) or
    PaperTailSampler (the published TailSampler); ``lof``: the head step,
    by default the gated drop within each product (LOFFilter scale "product",
    share "gated"), which keeps whole an image with more than nine tenths of
    its patches above its product's fence (unlike_share 0.9: another product
    that the tail estimator put in this one); the paper's step is
    ``LOFFilter()``, as SoftPatch's. With ``unlike_tail`` (default) those
    unlike images join the tail, views and all. ``views``: what is made of
    each tail image; ``tail_coreset``: how the tail rows are coreset.
    """

    coreset: Coreset = Coreset()
    lof: LOFFilter = LOFFilter(scale="product", share="gated", unlike_share=0.9)
    tail: PaperTailSampler | LinkageTailSampler = setting(
        LinkageTailSampler(), "how tail images are found: linkage or paper (the published TailSampler)",
        option="--tail-estimator", choices=TAIL_ESTIMATORS)
    views: Views = Views()
    tail_coreset: TailCoreset = TailCoreset()
    unlike_tail: bool = setting(True, "the images the head step keeps whole as unlike their product (none "
                                "without --lof-unlike-share) join the tail, with their views", option="--unlike-tail")

    method: ClassVar[str] = "tailedcore"
    constraints: ClassVar[dict] = {"unlike_tail": OneOf((True, False))}

    def view_transforms(self):
        return self.views.transforms()

    def build(self, train, rng, progress=False):
        with train.timer.stage("tail sampler"):
            estimate = train.tail
            if estimate is None:
                estimate = self.tail.estimate(TailInputs(train.embeddings, train.mean_patches))
        # The head step's LOF comes first (it draws nothing from rng): its unlike images may join the tail.
        scores, keep, unlike = self.lof.apply(train.projected, train.timer, progress, train.engine, train.products)
        tail = np.union1d(estimate.tail_indices, np.flatnonzero(unlike)) if self.unlike_tail else estimate.tail_indices
        patches_per_image = train.projected.shape[1]
        tail_rows_count = len(tail) * (1 + train.views_per_image) * patches_per_image
        sources = []  # (patch store, row indices) of the memory rows, in memory order
        row_images = []  # the training image of each of those rows
        info = {"tail_images": len(tail), "max_k": estimate.max_k,
                "tail_coreset": self.tail_coreset.scope_for(tail_rows_count)}
        if len(tail):
            with train.timer.stage("tail views"):
                views = train.views(tail)
            dim = train.projected.shape[-1]
            own_projected = train.projected[tail]  # (t, P, d)
            view_projected = views.projected.reshape(len(tail), train.views_per_image, patches_per_image, dim)
            # Products unknown: each image its own, with no rotation evidence.
            tail_products = np.arange(len(tail)) if train.products is None else train.products[tail]
            evidence = self.views.evidence(tail_products, own_projected.mean(axis=1), view_projected.mean(axis=2))
            kept_views = self.views.kept(tail_products, evidence)
            kept_rows = np.concatenate([np.ones(len(tail) * patches_per_image, dtype=bool),
                                        np.repeat(kept_views.ravel(), patches_per_image)])
            tail_rows = np.concatenate([own_projected.reshape(-1, dim), views.projected.reshape(-1, dim)])
            picks = self.tail_coreset.select(tail_rows, len(tail), patches_per_image, train.views_per_image,
                                             self.coreset, rng, train.timer, progress, kept_rows)
            info["tail_images_without_rotations"] = int((~kept_views.all(axis=1)).sum())
            info["rotation_evidence"] = {str(product): round(value, 4) for product, value in evidence.items()}
            n_own = len(tail) * patches_per_image
            own = picks[picks < n_own]
            own_rows = tail[own // patches_per_image] * patches_per_image + own % patches_per_image
            view_rows = picks[picks >= n_own] - n_own
            sources += [(train.patches, own_rows), (views.patches, view_rows)]
            row_images += [own_rows // patches_per_image,
                           tail[view_rows // (train.views_per_image * patches_per_image)]]
            info["tail_memory"] = len(picks)
        denoised_picks = _inlier_coreset(train, self.coreset, keep, rng, progress)
        sources.append((train.patches, denoised_picks))
        row_images.append(denoised_picks // patches_per_image)
        info.update(denoised_memory=len(denoised_picks), inliers=int(keep.sum()), patches=keep.size)
        diagnostics = {
            "class_sizes": estimate.class_sizes,
            "groups": estimate.groups,
            "max_k": estimate.max_k,
            "tail_indices": tail,
            "dropped_share": 1.0 - keep.mean(axis=1),
            "unlike": unlike,
        }
        return PolicyResult(MemoryBank(_gather(sources, train.timer), info=info), diagnostics,
                            np.concatenate(row_images).astype(np.int64))


POLICIES: dict[str, type[Policy]] = {cls.method: cls for cls in (PatchCorePolicy, SoftPatchPolicy, TailedCorePolicy)}


# Format-1 model files held the policy as flat parameters: name there -> (building block, its parameter).
FLAT_POLICY_PARAMS = {
    "coreset_ratio": ("coreset", "ratio"), "lof_k": ("lof", "k"), "lof_drop": ("lof", "drop"),
    "tail_keep": ("tail", "keep"), "tail_share": ("tail", "share"), "tail_distance": ("tail", "distance"),
    "max_tail_class": ("tail", "max_tail_class"), "view_step_degrees": ("views", "step_degrees"),
    "view_flip": ("views", "flip"), "tail_coreset": ("tail_coreset", "scope"),
    "max_tail_rows": ("tail_coreset", "max_rows"),
}
BLOCKS = {"coreset": Coreset, "lof": LOFFilter, "views": Views, "tail_coreset": TailCoreset}


def policy_from_flat_params(method: str, params: dict) -> Policy:
    """The policy of a format-1 model file; its flat policy parameters are removed from ``params``.

    Files written before the tail estimator was a parameter used the paper's.
    """
    blocks = {**BLOCKS, "tail": TAIL_ESTIMATORS[params.pop("tail_estimator", "paper")]}
    values: dict[str, dict] = {}
    for flat, (block, name) in FLAT_POLICY_PARAMS.items():
        if flat in params:
            values.setdefault(block, {})[name] = params.pop(flat)
    def build(block: str):
        accepted = inspect.signature(blocks[block]).parameters  # a linkage tail has no "keep", say
        return blocks[block](**{k: v for k, v in values.get(block, {}).items() if k in accepted})

    policy_class = POLICIES[method]
    return policy_class(**{block: build(block) for block in inspect.signature(policy_class).parameters
                           if block in blocks})
