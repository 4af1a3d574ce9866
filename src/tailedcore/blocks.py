"""The building blocks memory-bank policies are made of (policies.py), each a parameter object.

``Coreset`` (greedy coreset sampling, sampling.py), ``LOFFilter`` (patch-wise
LOF denoising, lof.py), ``Views`` (rotated/flipped views of tail images,
views.py) and ``TailCoreset`` (how the tail rows are coreset). The tail
estimators, the fifth kind of block, are in tail.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from .lof import (
    fence_inlier_mask,
    fence_shares,
    gated_inlier_mask,
    image_relative,
    inlier_mask,
    patchwise_lof_scores,
)
from .params import Interval, OneOf, Params, registered, setting
from .sampling import greedy_coreset, two_round_coreset
from .store import ArrayFile
from .timing import StageTimer
from .views import rotation_evidence, view_transforms


@registered
@dataclass(frozen=True)
class Coreset(Params):
    """Greedy k-center coreset keeping ``ratio`` of the rows it is given (at least one).

    exact_rows: None (the paper), one exact greedy run over every row, quadratic
    in the rows; a number: over more rows than that, the composable coreset
    (sampling.two_round_coreset) over shards of ``exact_rows`` consecutive rows
    (blocks of images), so no greedy run sees more than ``exact_rows`` rows and
    the time grows linearly; its shards may run in parallel (engine.py).
    """

    ratio: float = setting(0.1, "share of patches in memory")
    exact_rows: int | None = setting(None, "a coreset over more rows is composable (greedy runs over shards of this "
                                     "many rows; linear time); none = always exact, the paper",
                                     option="--exact-coreset-rows")

    constraints: ClassVar[dict] = {"ratio": Interval(float, 0.0, 1.0, "right"),
                                   "exact_rows": Interval(int, 2, none_ok=True)}

    def count(self, n_rows: int) -> int:
        return max(1, int(n_rows * self.ratio))

    def select(self, rows: np.ndarray | ArrayFile, rng: np.random.Generator, timer: StageTimer,
               progress: bool = False, engine=None, subset: np.ndarray | None = None) -> np.ndarray:
        """Indices into rows (N, d) float32 (about ``count`` of the ``subset`` rows, int64 indices; all
        rows when None), from random starts; none for no rows.

        The exact coreset reads all its rows into RAM; the composable one reads
        each shard's rows on its own, so ``rows`` may be an ArrayFile of any size.
        """
        n = len(rows) if subset is None else len(subset)
        if n == 0:
            return np.empty(0, dtype=np.int64)
        with timer.stage("coreset"):
            if self.exact_rows is None or n <= self.exact_rows:
                chosen = rows[:] if subset is None else rows[subset]
                picks = greedy_coreset(chosen, self.count(n), start=int(rng.integers(n)), progress=progress)
                return picks if subset is None else subset[picks]
            positions = np.arange(n) if subset is None else np.asarray(subset, dtype=np.int64)
            shards = [positions[start : start + self.exact_rows] for start in range(0, n, self.exact_rows)]
            return two_round_coreset(rows, shards, self.ratio, rng, block_rows=self.exact_rows, progress=progress,
                                     engine=engine)


LOF_SCALES = ("global", "image", "product")
LOF_SHARES = ("fixed", "fence", "gated", "gated-only")


class LOFResult(NamedTuple):
    """What the head step's LOF decides. scores: (n, P) float32 LOF scores; keep: (n, P) bool inlier mask;
    unlike: (n,) bool images kept whole as unlike the others of their scope (``LOFFilter.unlike``)."""

    scores: np.ndarray
    keep: np.ndarray
    unlike: np.ndarray


@registered
@dataclass(frozen=True)
class LOFFilter(Params):
    """Patch-wise LOF over ``k`` neighbours; the ``drop`` share of patches with the top scores is dropped.

    scale "global" (the paper): the top scores of all patches; "image": the top
    scores relative to each image's median score (lof.image_relative), so an
    image unlike the others everywhere (an unfound tail product, a varied
    head class) keeps its patches while a defect's region is still dropped;
    "product": the top ``drop`` share of each product's patches (the products
    the model found, products.py), so no product loses more than that share,
    however varied it is or however unlike the others (a missed tail product).

    share "fixed" (the paper): exactly the ``drop`` share of each scope;
    "fence": the scores above the scope's upper Tukey fence (lof.fence_inlier_mask),
    at most the ``drop`` share, so a scope with few outliers drops only those;
    "gated": those scores only in the scope's outlying images (many of their
    patches above the fence: a defect's region), and far-out scores anywhere
    (lof.gated_inlier_mask), so a clean image keeps its rare normal patches;
    "gated-only": the same without the far-out scores, so only outlying images
    lose patches.

    unlike_share: an image with more than this share of its patches above its
    scope's fence keeps every patch (``unlike``): it is unlike the others
    almost everywhere, another product that a missed tail put among them, not a
    defect, which covers a region. None (the paper): no image is spared.
    """

    k: int = setting(6, "LOF neighbours")
    drop: float = setting(0.15, "share of patches dropped by LOF")
    scale: str = setting("global", "which LOF scores are dropped: global (the paper), image (relative to each "
                         "image's median: spares images unlike the others everywhere) or product (the top share "
                         "of each product the model found)")
    share: str = setting("fixed", "how much LOF drops: fixed (exactly the drop share, the paper), fence "
                         "(scores above the upper Tukey fence, at most the drop share), gated (those only in "
                         "images with many of them, and far-out scores anywhere) or gated-only (without the "
                         "far-out ones)")
    unlike_share: float | None = setting(None, "an image with more than this share of its patches above the LOF "
                                         "fence keeps them all: another product among the images, not a defect "
                                         "(None: none spared, the paper)")

    constraints: ClassVar[dict] = {"k": Interval(int, 1), "drop": Interval(float, 0.0, 1.0, "left"),
                                   "scale": OneOf(LOF_SCALES), "share": OneOf(LOF_SHARES),
                                   "unlike_share": Interval(float, 0.0, 1.0, "neither", none_ok=True)}

    def apply(self, projected: np.ndarray, timer: StageTimer, progress: bool = False, engine=None,
              products: np.ndarray | None = None) -> LOFResult:
        """projected (n, P, d) -> LOF scores, inlier mask and the images kept whole as unlike their scope
        (``unlike``); products: (n,) int64 product of each image (needed by scale "product")."""
        if self.scale == "product" and (products is None or len(products) != len(projected)):
            raise ValueError("LOFFilter.scale='product' needs the product of every image")
        mask = {"fixed": inlier_mask, "fence": fence_inlier_mask, "gated": gated_inlier_mask,
                "gated-only": functools.partial(gated_inlier_mask, far_out=False)}[self.share]
        with timer.stage("lof"):
            scores = patchwise_lof_scores(projected, self.k, progress, engine)
            keep = np.empty(scores.shape, dtype=bool)
            for scope, scope_scores in self._scopes(scores, products):
                keep[scope] = mask(scope_scores, self.drop)
            unlike = self.unlike(scores, products)
            keep[unlike] = True
            return LOFResult(scores, keep, unlike)

    def unlike(self, scores: np.ndarray, products: np.ndarray | None = None) -> np.ndarray:
        """(n,) bool: the images kept whole as unlike the others of their scope almost everywhere, more than
        ``unlike_share`` of their patches above its fence (none without ``unlike_share``); scores (n, P) as
        ``apply`` returns them. A defect covers a region of its image; an image of another product, which a
        missed tail puts among a product's images, differs at almost every location."""
        if self.unlike_share is None:
            return np.zeros(len(scores), dtype=bool)
        return self.fence_shares(scores, products) > self.unlike_share

    def fence_shares(self, scores: np.ndarray, products: np.ndarray | None = None) -> np.ndarray:
        """(n,) float64: each image's share of patches above its scope's fence (lof.fence_shares)."""
        shares = np.empty(len(scores))
        for scope, scope_scores in self._scopes(scores, products):
            shares[scope] = fence_shares(scope_scores, self.drop)
        return shares

    def _scopes(self, scores: np.ndarray, products: np.ndarray | None):
        """(rows of the scope, the scores the drop is decided on (rows, P)) of every scope."""
        if self.scale != "product":
            yield slice(None), image_relative(scores) if self.scale == "image" else scores
            return
        for product in np.unique(products):
            yield products == product, scores[products == product]


@registered
@dataclass(frozen=True)
class Views(Params):
    """Rotations every ``step_degrees`` in [0, 360), each also flipped when ``flip``, the original left out.

    ``rotations`` "always": every tail image gets every view (the paper). "evidence": a product of two
    or more tail images keeps its rotated views only when its own images lie in different orientations
    (``views.rotation_evidence`` below ``evidence_below``); otherwise only its flipped copies (rotated
    textures cost a little, docs/tail.md). A one-image product has no evidence and keeps every view.
    """

    step_degrees: float = setting(15.0, "rotation step of tail views in degrees", option="--view-step")
    flip: bool = setting(True, "each view also flipped", option=None)
    rotations: str = setting("always", "rotated views of every tail image (always, the paper) or only of products "
                             "whose own images lie in different orientations (evidence)", option="--view-rotations")
    evidence_below: float = setting(0.95, "with --view-rotations evidence: the rotation evidence below which a "
                                    "product keeps its rotated views", option="--view-evidence-below")

    constraints: ClassVar[dict] = {"step_degrees": Interval(float, 0.0, 360.0, "right"),
                                   "flip": OneOf((True, False)), "rotations": OneOf(("always", "evidence")),
                                   "evidence_below": Interval(float, 0.0, None, "neither")}

    def transforms(self) -> list[tuple[float, bool]]:
        return view_transforms(self.step_degrees, self.flip)

    def evidence(self, products: np.ndarray, images: np.ndarray, views: np.ndarray) -> dict[int, float]:
        """Rotation evidence (``views.rotation_evidence``) of each product of two or more of n tail images.
        products: (n,) int64 product of each; images: (n, d) and views: (n, V, d) mean patch features."""
        return {int(product): rotation_evidence(images[products == product], views[products == product],
                                                self.transforms())
                for product in np.unique(products) if (products == product).sum() > 1}

    def kept(self, products: np.ndarray, evidence: dict[int, float]) -> np.ndarray:
        """(n, V) bool: the views kept of each of n tail images of ``products`` (n,), given their products'
        ``evidence``: every view, but with ``rotations`` "evidence" only the unrotated ones of a product whose
        evidence is not below ``evidence_below``."""
        transforms = self.transforms()
        kept = np.ones((len(products), len(transforms)), dtype=bool)
        if self.rotations == "always":
            return kept
        unrotated = np.array([angle % 360 == 0 for angle, _ in transforms])
        for product, value in evidence.items():
            if value >= self.evidence_below:
                kept[products == product] = unrotated
        return kept


TAIL_CORESETS = ("joint", "per-image", "two-round")


@registered
@dataclass(frozen=True)
class TailCoreset(Params):
    """How the tail rows (tail images and their views) are coreset.

    scope "joint": one coreset over every row (the paper); "per-image": one per
    tail image over its own patches and views; "two-round": per-image coresets
    (oversampled), then coresets over the union of blocks of images
    (sampling.two_round_coreset). Both grow linearly with the tail instead of
    quadratically. A joint coreset over more than ``max_rows`` rows runs
    two-round instead (None: no limit, the paper).
    """

    scope: str = setting("joint", "tail coreset scope: joint (the paper), per-image or two-round",
                         option="--tail-coreset")
    max_rows: int | None = setting(None, "a joint tail coreset over more patch rows (with views) runs two-round",
                                   option="--max-tail-rows")

    constraints: ClassVar[dict] = {"scope": OneOf(TAIL_CORESETS), "max_rows": Interval(int, 1, none_ok=True)}

    def scope_for(self, n_rows: int) -> str:
        return "two-round" if self.scope == "joint" and self.max_rows is not None and n_rows > self.max_rows \
            else self.scope

    def select(self, tail_rows: np.ndarray, n_images: int, rows_per_image: int, views_per_image: int,
               coreset: Coreset, rng: np.random.Generator, timer: StageTimer, progress: bool,
               kept: np.ndarray | None = None) -> np.ndarray:
        """Coreset picks (row indices) of the tail rows: the images' own patches, then all their views.

        tail_rows: (n_images * rows_per_image * (1 + views_per_image), d), own
        patches of image j at [j * R, (j + 1) * R), its views at
        n_images * R + [j * V * R, (j + 1) * V * R); kept: (len(tail_rows),) bool,
        the rows the coreset may pick and counts (None: every row).
        """
        subset = None if kept is None or kept.all() else np.flatnonzero(kept)
        scope = self.scope_for(len(tail_rows) if subset is None else len(subset))
        if scope == "joint":
            if subset is None:
                return coreset.select(tail_rows, rng, timer, progress)
            return subset[coreset.select(tail_rows[subset], rng, timer, progress)]
        own_start, view_rows = n_images * rows_per_image, views_per_image * rows_per_image
        images = [np.concatenate([np.arange(image * rows_per_image, (image + 1) * rows_per_image),
                                  own_start + np.arange(image * view_rows, (image + 1) * view_rows)])
                  for image in range(n_images)]
        if subset is not None:
            images = [rows[kept[rows]] for rows in images]
        if scope == "two-round":
            with timer.stage("coreset"):
                return two_round_coreset(tail_rows, images, coreset.ratio, rng, progress=progress)
        return np.concatenate([rows[coreset.select(tail_rows[rows], rng, timer)] for rows in images])
