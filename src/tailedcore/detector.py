"""The detectors users see: ``PatchCore``, ``SoftPatch``, ``TailedCore``.

A detector holds parameters (scikit-learn style, reference defaults) and runs
the one pipeline: images -> backbone -> patch features -> memory policy on
``fit``; images -> patch features -> nearest-neighbour scores on ``predict``.
The three methods differ only in ``_policy``.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import policies
from .data import ImageLoadError, collect_images, image_size, load_image, preprocess, training_images, upscale_problem
from .features import FeatureBatch, FeatureExtractor
from .memory import MemoryBank, ModelFileError, read_model, write_model
from .policies import FeatureSet, PolicyResult, TrainingFeatures
from .predictions import Predictions
from .profiling import Profiler
from .sampling import random_projection
from .scoring import PatchScorer, anomaly_maps
from .store import FeatureCache, FeatureStore, ImageSubset
from .tail import TAIL_ESTIMATORS, LinkageTailSampler, PaperTailSampler, estimate_class_sizes
from .thresholds import Thresholds, calibrate_false_alarm
from .views import augmented_views, view_transforms

log = logging.getLogger(__name__)


def _check_upscale(name, size: tuple[int, int], resize: int, strict: bool) -> None:
    """Warn about an image too small for ``resize`` (``strict``: raise ImageLoadError)."""
    problem = upscale_problem(size, resize)
    if problem and strict:
        raise ImageLoadError(f"{name}: {problem}")
    if problem:
        log.warning("%s: %s", name, problem)


def _as_paths(images) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        return training_images(images)
    return collect_images(list(images))


class Detector:
    """Base detector. Subclasses set ``method`` and implement ``_policy``.

    Parameters (defaults as in PatchCore / the TailedCore paper, except the
    backbone, EfficientNet-Lite0 instead of WideResNet-50-2 (it runs offline
    from a PyPI wheel), and ``calibration_share``, which sets 10% of the
    images of large classes aside for thresholds; 0 is the paper's protocol):
        backbone, weights: backbone registry name and optional local weights file.
        resize, crop: shorter side resized to ``resize``, center crop ``crop``.
        patch_size: neighbourhood aggregated per location (3 = 3x3).
        layer_dim, feature_dim: per-layer and final pooled feature sizes.
        coreset_ratio: share of patches kept by the greedy coreset.
        projection_dim: dimension of the random projection for coreset and LOF.
        num_neighbors: nearest memory features averaged into a patch score.
        squared_distance: score with squared L2 (as the reference code) or L2.
        blur_sigma: Gaussian blur of the anomaly map, in pixels.
        search: nearest-neighbour backend (exact, flat, ivf, hnsw);
        search_options: its settings, e.g. {"nprobe": 16} (ivf), {"ef_search": 64} (hnsw).
        precision: backbone arithmetic, float32 (reference) or bfloat16 (faster).
        batch_size: images per backbone batch.
        calibration_share: share of the training images set aside (never put in
            memory) to calibrate thresholds; drawn only among images whose
            TailSampler class-size estimate (reference settings, whatever the
            method's own, so every method holds out the same images) is at least
            ``calibration_min_class``, so rare classes stay whole. 0 = train on
            everything (the paper).
        false_alarm_rate: share of normal images allowed above the threshold.
        seed: seeds the projection, the coreset start and the calibration draw.
        progress: show progress bars.
    """

    method: ClassVar[str] = ""

    def __init__(
        self,
        backbone: str = "efficientnet-lite0",
        weights: str | None = None,
        resize: int = 256,
        crop: int = 224,
        patch_size: int = 3,
        layer_dim: int = 1024,
        feature_dim: int = 1024,
        coreset_ratio: float = 0.1,
        projection_dim: int = 128,
        num_neighbors: int = 1,
        squared_distance: bool = True,
        blur_sigma: float = 4.0,
        search: str = "exact",
        search_options: dict | None = None,
        precision: str = "float32",
        batch_size: int = 16,
        calibration_share: float = 0.1,
        calibration_min_class: int = 20,
        false_alarm_rate: float = 0.01,
        seed: int = 0,
        progress: bool = True,
    ):
        self.backbone = backbone
        self.weights = weights
        self.resize = resize
        self.crop = crop
        self.patch_size = patch_size
        self.layer_dim = layer_dim
        self.feature_dim = feature_dim
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.squared_distance = squared_distance
        self.blur_sigma = blur_sigma
        self.search = search
        self.search_options = search_options
        self.precision = precision
        self.batch_size = batch_size
        self.calibration_share = calibration_share
        self.calibration_min_class = calibration_min_class
        self.false_alarm_rate = false_alarm_rate
        self.seed = seed
        self.progress = progress
        self.memory_: MemoryBank | None = None
        self.diagnostics_: dict = {}
        self.training_paths_: list[Path] = []
        self.calibration_paths_: list[Path] = []
        self.thresholds_: Thresholds | None = None
        self.training_summary_: dict = {}
        self.skipped_: list[tuple[Path, str]] = []
        self.profile_ = Profiler()
        self._extractor: FeatureExtractor | None = None
        self._scorer: PatchScorer | None = None

    # -- parameters -------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            if "__init__" in vars(klass) and klass is not object:
                for name in inspect.signature(klass.__init__).parameters:
                    if name not in ("self", "kwargs") and name not in names:
                        names.append(name)
        return names

    def get_params(self) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> Detector:
        """Change parameters (e.g. search, precision on a fitted model); caches are rebuilt as needed."""
        unknown = set(params) - set(self._param_names())
        if unknown:
            raise ValueError(f"unknown parameters: {', '.join(sorted(unknown))}")
        for name, value in params.items():
            setattr(self, name, value)
        self._extractor = None
        self._scorer = None
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # -- pipeline ---------------------------------------------------------
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor(
                self.backbone, self.weights, self.resize, self.crop, self.patch_size,
                self.layer_dim, self.feature_dim, self.batch_size, self.progress, self.precision,
            )
        return self._extractor

    def _policy(self, train: TrainingFeatures, rng: np.random.Generator) -> PolicyResult:
        raise NotImplementedError

    def _view_transforms(self) -> list[tuple[float, bool]]:
        """(angle, flip) of the views made of each tail image (none outside TailedCore)."""
        return []

    def _extract(self, paths: list[Path], folder: Path, projection: np.ndarray, on_error, cache: FeatureCache | None
                 ) -> tuple[FeatureSet, np.ndarray, np.ndarray, np.ndarray]:
        """Stream training features into a store under ``folder``; projections and embeddings stay in RAM.

        Returns (features, embeddings (n_ok, E), mean patch features (n_ok, D), indices of the
        readable images in ``paths``).
        """
        extractor = self.extractor
        n_locations = extractor.grid_shape[0] * extractor.grid_shape[1]
        store = FeatureStore(folder / "patches.f32", self.feature_dim)
        projected = np.empty((len(paths), n_locations, self.projection_dim), dtype=np.float32)
        embeddings, mean_patches, readable = [], [], []
        for positions, batch in extractor.iter_batches(paths, True, "features", on_error, cache):
            store.append(batch.patches.reshape(-1, self.feature_dim))
            projected[len(readable) : len(readable) + len(positions)] = batch.patches @ projection
            embeddings.append(batch.embeddings)
            mean_patches.append(batch.patches.mean(axis=1))
            readable += positions
        if not readable:
            raise ValueError("no readable training images")
        return (FeatureSet(store, projected[: len(readable)]), np.concatenate(embeddings),
                np.concatenate(mean_patches), np.asarray(readable, dtype=np.int64))

    def _view_features(self, paths: list[Path], folder: Path, projection: np.ndarray, stores: list[FeatureStore]):
        """A function: training-image indices -> FeatureSet of all their rotated/flipped views.

        Views of image i are rows [i * V, (i + 1) * V) in the order of ``_view_transforms``;
        the store it opens is added to ``stores`` (closed by the caller).
        """

        def views(indices: np.ndarray) -> FeatureSet:
            extractor = self.extractor
            transforms = self._view_transforms()
            store = FeatureStore(folder / "views.f32", self.feature_dim)
            stores.append(store)
            n_locations = extractor.grid_shape[0] * extractor.grid_shape[1]
            projected = np.empty((len(indices) * len(transforms), n_locations, self.projection_dim), np.float32)
            row = 0
            for index in tqdm(indices, desc="tail views", unit="img", disable=not self.progress, leave=False):
                image = extractor.normalise([load_image(paths[int(index)], self.resize, self.crop)])[0]
                all_views = augmented_views(image, transforms)
                for start in range(0, len(all_views), self.batch_size):
                    chunk = all_views[start : start + self.batch_size]
                    batch = extractor.features(chunk)
                    store.append(batch.patches.reshape(-1, self.feature_dim))
                    projected[row : row + len(chunk)] = batch.patches @ projection
                    row += len(chunk)
            return FeatureSet(store, projected)

        return views

    def _calibration_images(self, embeddings: np.ndarray) -> np.ndarray:
        """Indices of training images set aside for threshold calibration (sorted)."""
        if self.calibration_share <= 0 or len(embeddings) < 2:
            return np.empty(0, dtype=np.int64)
        eligible = np.flatnonzero(estimate_class_sizes(embeddings) >= self.calibration_min_class)
        count = min(int(round(self.calibration_share * len(eligible))), len(embeddings) - 1)
        rng = np.random.default_rng([self.seed, 1])
        return np.sort(rng.choice(eligible, size=count, replace=False)) if count > 0 else np.empty(0, np.int64)

    def _check_params(self) -> None:
        """Raise ValueError for a method parameter out of range, before any image is read."""

    def fit(self, images, cache_dir: str | os.PathLike | None = None, strict: bool = False) -> Detector:
        """Fit on training images: a list of files/folders, or a dataset root (all train/good merged).

        Unreadable images are skipped with one warning each and listed in
        ``skipped_`` (``strict``: raise instead). With ``cache_dir``, computed
        feature batches are kept there and reused by the next run.
        """
        self._check_params()
        paths = _as_paths(images)
        if not paths:
            raise ValueError("no training images")
        self.skipped_ = []

        def skip(path: Path, reason: str) -> None:
            log.warning("skipping unreadable training image: %s", reason)
            self.skipped_.append((path, reason))

        cache = None
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            cache = FeatureCache(Path(cache_dir) / "features")
        self.profile_ = Profiler()
        stores: list[FeatureStore] = []
        with tempfile.TemporaryDirectory(prefix="tailedcore-", dir=cache_dir) as work:
            try:
                self._fit_with(Path(work), paths, None if strict else skip, cache, stores)
            finally:
                for store in stores:
                    store.close()
        log.info("%s: memory bank of %d features from %d images%s", self.method, len(self.memory_),
                 len(self.training_paths_),
                 f"; {len(self.calibration_paths_)} images set aside for thresholds" if self.calibration_paths_ else "")
        return self

    def _fit_with(self, folder: Path, paths: list[Path], on_error, cache: FeatureCache | None,
                  stores: list[FeatureStore]) -> None:
        """The fit itself, with temporary files under ``folder`` (stores opened are added to ``stores``)."""
        rng = np.random.default_rng(self.seed)
        projection = random_projection(self.feature_dim, self.projection_dim, self.seed)
        grid = self.extractor.grid_shape
        patches_per_image = grid[0] * grid[1]
        with self.profile_.stage("features"):
            features, embeddings, mean_patches, readable = self._extract(paths, folder, projection, on_error, cache)
        stores.append(features.patches)
        if self.skipped_:
            log.warning("skipped %d unreadable training image(s) of %d", len(self.skipped_), len(paths))
        paths = [paths[i] for i in readable]
        held_out = self._calibration_images(embeddings)
        kept = np.setdiff1d(np.arange(len(paths)), held_out)
        kept_paths = [paths[i] for i in kept]
        # Without a held-out share, no copy of the projections (the largest array in RAM).
        projected = features.projected[kept] if len(held_out) else features.projected
        train = TrainingFeatures(
            ImageSubset(features.patches, kept, patches_per_image), projected, embeddings[kept], mean_patches[kept],
            self._view_features(kept_paths, folder, projection, stores), len(self._view_transforms()),
            self.profile_,
        )
        self.training_paths_ = kept_paths
        self.calibration_paths_ = [paths[i] for i in held_out]
        result = self._policy(train, rng)
        self.memory_, self.diagnostics_ = result.memory, result.diagnostics
        self._scorer, self.thresholds_ = None, None
        if len(held_out):
            with self.profile_.stage("calibration"):
                scores = np.stack([
                    self.scorer.score(features.patches.read(i * patches_per_image, (i + 1) * patches_per_image))
                    for i in held_out]).reshape(-1, *grid)
                maps = anomaly_maps(scores, self.crop, self.blur_sigma)
                self.thresholds_ = calibrate_false_alarm(scores.reshape(len(scores), -1).max(axis=1), maps,
                                                         self.false_alarm_rate, "held-out training images")
        self.training_summary_ = {"memory_info": self.memory_.info, "training_images": len(kept),
                                  "calibration_images": len(held_out)}

    def calibrate(self, normal_images) -> Thresholds:
        """Set thresholds from normal images (files/folders) at ``false_alarm_rate``."""
        predictions = self.predict(normal_images)
        self.thresholds_ = calibrate_false_alarm(predictions.image_scores, predictions.anomaly_maps,
                                                 self.false_alarm_rate, "normal calibration images")
        return self.thresholds_

    def build_index(self) -> None:
        """Build the nearest-neighbour index now (it is otherwise built at the first prediction)."""
        _ = self.scorer

    @property
    def scorer(self) -> PatchScorer:
        if self.memory_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load a model")
        if self._scorer is None:
            self._scorer = PatchScorer(self.memory_.features, self.memory_.weights, self.num_neighbors,
                                       self.squared_distance, self.search, **(self.search_options or {}))
        return self._scorer

    def _predictions(self, batches: Iterator[FeatureBatch], paths: list[Path]) -> Predictions:
        scorer = self.scorer
        grid = self.extractor.grid_shape
        patch_scores, maps = [], []
        while True:
            with self.profile_.stage("test features"):
                batch = next(batches, None)
            if batch is None:
                break
            with self.profile_.stage("test scoring"):
                scores = scorer.score(batch.patches).reshape(-1, *grid)
                patch_scores.append(scores)
                maps.append(anomaly_maps(scores, self.crop, self.blur_sigma))
        if not patch_scores:
            no_maps = np.empty((0, self.crop, self.crop), np.float32)
            return Predictions([], np.empty(0, np.float32), np.empty((0, *grid), np.float32), no_maps, self.thresholds_)
        patch_array = np.concatenate(patch_scores)
        return Predictions(paths, patch_array.reshape(len(paths), -1).max(axis=1), patch_array, np.concatenate(maps),
                           self.thresholds_)

    def predict(self, images, strict: bool = False) -> Predictions:
        """Score image files: a list of files/folders (or one; folders with their sub-folders) -> Predictions.

        Unreadable files are left out and listed in ``Predictions.failures``
        (``strict``: raise instead). Images upscaled more than ``data.MAX_UPSCALE``
        times get a warning each (``strict``: ImageLoadError).
        """
        paths = collect_images([images] if isinstance(images, (str, os.PathLike)) else list(images), recursive=True)
        self.build_index()  # fails before any image is read when the model is not fitted
        for path in paths:
            try:
                size = image_size(path)
            except ImageLoadError:
                continue  # reported when the image is read
            _check_upscale(path, size, self.resize, strict)
        failures: list[tuple[Path, str]] = []
        scored: list[Path] = []

        def batches():
            on_error = None if strict else (lambda path, reason: failures.append((path, reason)))
            for positions, batch in self.extractor.iter_batches(paths, desc="predict", on_error=on_error):
                scored.extend(paths[i] for i in positions)
                yield batch

        predictions = self._predictions(batches(), scored)
        predictions.failures = failures
        return predictions

    def predict_images(self, images: Sequence[Image.Image], names: Sequence[str] | None = None) -> Predictions:
        """Score decoded images (any size and mode) -> Predictions named by ``names``."""
        if names is not None and len(names) != len(images):
            raise ValueError(f"names: {len(names)} given for {len(images)} images")
        self.build_index()
        names = names or [f"image-{i}" for i in range(len(images))]
        for image, name in zip(images, names):
            _check_upscale(name, image.size, self.resize, strict=False)
        arrays = [preprocess(image, self.resize, self.crop) for image in images]
        extractor = self.extractor
        batches = (extractor.features(extractor.normalise(arrays[i : i + self.batch_size]))
                   for i in range(0, len(arrays), self.batch_size))
        return self._predictions(batches, [Path(n) for n in names])

    # -- persistence ------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model (memory bank + parameters) to one safetensors file."""
        if self.memory_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: nothing to save")
        arrays = {"memory": self.memory_.features}
        if self.memory_.weights is not None:
            arrays["weights"] = self.memory_.weights
        params = self.get_params()
        config = {
            "method": self.method,
            "params": params,
            **self.training_summary_,
            "thresholds": self.thresholds_.to_dict() if self.thresholds_ else None,
            "torch_version": torch.__version__,
        }
        write_model(path, arrays, config)


class PatchCore(Detector):
    """PatchCore: memory = greedy coreset of all training patches."""

    method = "patchcore"

    def _policy(self, train, rng):
        return policies.patchcore(train, rng, self.coreset_ratio, self.progress)


class SoftPatch(Detector):
    """SoftPatch: patch-wise LOF denoising, coreset, LOF-weighted scores.

    lof_k: LOF neighbours; lof_drop: share of patches dropped (top LOF scores).
    """

    method = "softpatch"

    def __init__(self, lof_k: int = 6, lof_drop: float = 0.15, **kwargs):
        super().__init__(**kwargs)
        self.lof_k = lof_k
        self.lof_drop = lof_drop

    def _policy(self, train, rng):
        return policies.softpatch(train, rng, self.coreset_ratio, self.lof_k, self.lof_drop, self.progress)


class TailedCore(Detector):
    """TailedCore: tail images (TailSampler) kept whole with rotated/flipped views; LOF-denoised rest.

    lof_k, lof_drop: as SoftPatch.
    tail_estimator: how tail images are found: "linkage" (default; single-linkage
        clusters of the images, see tail.LinkageTailSampler) or "paper" (the
        published TailSampler).
    tail_keep: share of candidate similarities kept by the trim_min threshold (paper).
    tail_share: the 15% rule of max K (both estimators).
    tail_distance: cosine distance at which linkage clusters are cut (linkage).
    max_tail_class: largest class size counted as tail (linkage; None: the paper's rule alone).
    view_step_degrees, view_flip: rotations every step in [0, 360) x flips.
    max_tail_rows: a joint tail coreset over more patch rows (with views) than
        this runs as "two-round" instead (None: no limit, the paper).
    tail_coreset: "joint", one coreset over all tail patches and views (the
        paper); "per-image", one per tail image; or "two-round", per-image
        coresets then one over each block's union (both linear in the tail size).
    """

    method = "tailedcore"

    def __init__(self, lof_k: int = 6, lof_drop: float = 0.15, tail_estimator: str = "linkage",
                 tail_keep: float = 0.85, tail_share: float = 0.15, tail_distance: float = 0.4,
                 max_tail_class: int | None = 19, view_step_degrees: float = 15.0, view_flip: bool = True,
                 max_tail_rows: int | None = None, tail_coreset: str = "joint", **kwargs):
        super().__init__(**kwargs)
        self.max_tail_rows = max_tail_rows
        self.tail_coreset = tail_coreset
        self.lof_k = lof_k
        self.lof_drop = lof_drop
        self.tail_estimator = tail_estimator
        self.tail_keep = tail_keep
        self.tail_share = tail_share
        self.tail_distance = tail_distance
        self.max_tail_class = max_tail_class
        self.view_step_degrees = view_step_degrees
        self.view_flip = view_flip

    def _view_transforms(self) -> list[tuple[float, bool]]:
        return view_transforms(self.view_step_degrees, self.view_flip)

    def _tail_sampler(self) -> PaperTailSampler | LinkageTailSampler:
        if self.tail_estimator == "paper":
            return PaperTailSampler(self.tail_keep, self.tail_share)
        if self.tail_estimator == "linkage":
            return LinkageTailSampler(self.tail_distance, share=self.tail_share, max_tail_class=self.max_tail_class)
        raise ValueError(f"tail_estimator='{self.tail_estimator}': choose from {', '.join(TAIL_ESTIMATORS)}")

    def _check_params(self) -> None:
        if self.tail_coreset not in policies.TAIL_CORESETS:
            raise ValueError(f"tail_coreset='{self.tail_coreset}': choose from {', '.join(policies.TAIL_CORESETS)}")
        self._tail_sampler().check()

    def _policy(self, train, rng):
        return policies.tailedcore(train, rng, self.coreset_ratio, self.lof_k, self.lof_drop, self._tail_sampler(),
                                   self.max_tail_rows, self.tail_coreset, self.progress)


METHODS: dict[str, type[Detector]] = {cls.method: cls for cls in (PatchCore, SoftPatch, TailedCore)}


def load(path: str | os.PathLike, **overrides) -> Detector:
    """Load a saved model; ``overrides`` replace run-time parameters (e.g. search, batch_size)."""
    arrays, config = read_model(path)
    method = config.get("method")
    if method not in METHODS:
        raise ModelFileError(f"{path}: unknown method '{method}'")
    cls = METHODS[method]
    params = dict(config.get("params", {}))
    unknown = set(params) - set(cls._param_names())
    if unknown:
        raise ModelFileError(f"{path}: unknown parameters {sorted(unknown)}")
    wrong = set(overrides) - set(cls._param_names())
    if wrong:
        raise ValueError(f"unknown parameters for {method}: {', '.join(sorted(wrong))}")
    params.update(overrides)
    detector = cls(**params)
    detector.memory_ = MemoryBank(arrays["memory"], arrays.get("weights"), config.get("memory_info", {}))
    if config.get("thresholds"):
        detector.thresholds_ = Thresholds.from_dict(config["thresholds"])
    detector.training_summary_ = {k: config.get(k) for k in ("memory_info", "training_images", "calibration_images")}
    return detector
