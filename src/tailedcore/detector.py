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
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm import tqdm

from . import policies
from .data import collect_images, training_images
from .features import FeatureExtractor
from .memory import MemoryBank, ModelFileError, read_model, write_model
from .policies import FeatureSet, PolicyResult, TrainingFeatures
from .profiling import Profiler
from .sampling import random_projection
from .scoring import PatchScorer, anomaly_maps
from .store import FeatureStore
from .views import augmented_views

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Scores of m images.

    image_scores: (m,) float32; patch_scores: (m, h, w) float32;
    anomaly_maps: (m, crop, crop) float32 (upsampled, blurred patch scores).
    """

    paths: list[Path]
    image_scores: np.ndarray
    patch_scores: np.ndarray
    anomaly_maps: np.ndarray


def _as_paths(images) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        return training_images(images)
    return collect_images(list(images))


class Detector:
    """Base detector. Subclasses set ``method`` and implement ``_policy``.

    Parameters (defaults as in PatchCore / the TailedCore paper):
        backbone, weights: backbone registry name and optional local weights file.
        resize, crop: shorter side resized to ``resize``, center crop ``crop``.
        patch_size: neighbourhood aggregated per location (3 = 3x3).
        layer_dim, feature_dim: per-layer and final pooled feature sizes.
        coreset_ratio: share of patches kept by the greedy coreset.
        projection_dim: dimension of the random projection for coreset and LOF.
        num_neighbors: nearest memory features averaged into a patch score.
        squared_distance: score with squared L2 (as the reference code) or L2.
        blur_sigma: Gaussian blur of the anomaly map, in pixels.
        search: nearest-neighbour backend (exact, flat, ivf, hnsw).
        batch_size: images per backbone batch.
        seed: seeds the projection and the coreset start.
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
        batch_size: int = 16,
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
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.memory_: MemoryBank | None = None
        self.diagnostics_: dict = {}
        self.training_paths_: list[Path] = []
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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # -- pipeline ---------------------------------------------------------
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor(
                self.backbone, self.weights, self.resize, self.crop, self.patch_size,
                self.layer_dim, self.feature_dim, self.batch_size, self.progress,
            )
        return self._extractor

    def _policy(self, train: TrainingFeatures, rng: np.random.Generator) -> PolicyResult:
        raise NotImplementedError

    def _extract(self, paths: list[Path], folder: Path, name: str, projection: np.ndarray,
                 with_embeddings: bool) -> tuple[FeatureSet, np.ndarray | None]:
        """Stream features of ``paths`` into a store under ``folder``; keep projections in RAM."""
        extractor = self.extractor
        n_locations = extractor.grid_shape[0] * extractor.grid_shape[1]
        store = FeatureStore(folder / f"{name}.f32", self.feature_dim)
        projected = np.empty((len(paths), n_locations, self.projection_dim), dtype=np.float32)
        embeddings = []
        row = 0
        for _, batch in extractor.iter_batches(paths, with_embeddings, desc=name):
            store.append(batch.patches.reshape(-1, self.feature_dim))
            projected[row : row + len(batch.patches)] = batch.patches @ projection
            row += len(batch.patches)
            if with_embeddings:
                embeddings.append(batch.embeddings)
        return FeatureSet(store, projected), (np.concatenate(embeddings) if with_embeddings else None)

    def _view_features(self, paths: list[Path], folder: Path, projection: np.ndarray):
        """A function: training-image indices -> FeatureSet of all their rotated/flipped views."""

        def views(indices: np.ndarray) -> FeatureSet:
            extractor = self.extractor
            store = FeatureStore(folder / "views.f32", self.feature_dim)
            chunks = []
            for index in tqdm(indices, desc="tail views", unit="img", disable=not self.progress, leave=False):
                image = extractor.normalise(extractor.load([paths[int(index)]]))[0]
                all_views = augmented_views(image, self.view_step_degrees, self.view_flip)
                for start in range(0, len(all_views), self.batch_size):
                    batch = extractor.features(all_views[start : start + self.batch_size])
                    store.append(batch.patches.reshape(-1, self.feature_dim))
                    chunks.append(batch.patches @ projection)
            n_locations = extractor.grid_shape[0] * extractor.grid_shape[1]
            empty = np.empty((0, n_locations, self.projection_dim), dtype=np.float32)
            return FeatureSet(store, np.concatenate(chunks) if chunks else empty)

        return views

    def fit(self, images, cache_dir: str | os.PathLike | None = None) -> Detector:
        """Fit on training images: a list of files/folders, or a dataset root (all train/good merged)."""
        paths = _as_paths(images)
        if not paths:
            raise ValueError("no training images")
        rng = np.random.default_rng(self.seed)
        projection = random_projection(self.feature_dim, self.projection_dim, self.seed)
        self.profile_ = Profiler()
        with tempfile.TemporaryDirectory(prefix="tailedcore-", dir=cache_dir) as work:
            folder = Path(work)
            with self.profile_.stage("features"):
                features, embeddings = self._extract(paths, folder, "patches", projection, with_embeddings=True)
            train = TrainingFeatures(
                features.patches, features.projected, embeddings, self._view_features(paths, folder, projection),
                self.profile_,
            )
            result = self._policy(train, rng)
            features.patches.close()
        self.memory_ = result.memory
        self.diagnostics_ = result.diagnostics
        self.training_paths_ = paths
        self._scorer = None
        log.info("%s: memory bank of %d features from %d images", self.method, len(self.memory_), len(paths))
        return self

    @property
    def scorer(self) -> PatchScorer:
        if self.memory_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load a model")
        if self._scorer is None:
            self._scorer = PatchScorer(
                self.memory_.features, self.memory_.weights, self.num_neighbors, self.squared_distance, self.search
            )
        return self._scorer

    def predict(self, images) -> Predictions:
        """Score images: a list of files/folders -> Predictions."""
        paths = collect_images([images] if isinstance(images, (str, os.PathLike)) else list(images))
        scorer = self.scorer
        grid = self.extractor.grid_shape
        patch_scores, maps = [], []
        batches = self.extractor.iter_batches(paths, desc="predict")
        while True:
            with self.profile_.stage("test features"):
                item = next(batches, None)
            if item is None:
                break
            with self.profile_.stage("test scoring"):
                scores = scorer.score(item[1].patches).reshape(-1, *grid)
                patch_scores.append(scores)
                maps.append(anomaly_maps(scores, self.crop, self.blur_sigma))
        if not paths:
            empty = np.empty((0, *grid), dtype=np.float32)
            return Predictions([], np.empty(0, dtype=np.float32), empty, np.empty((0, self.crop, self.crop), np.float32))
        patch_array = np.concatenate(patch_scores)
        return Predictions(paths, patch_array.reshape(len(paths), -1).max(axis=1), patch_array, np.concatenate(maps))

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
            "memory_info": self.memory_.info,
            "training_images": len(self.training_paths_),
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

    lof_k, lof_drop: as SoftPatch. tail_keep: share of candidate similarities
    kept by the trim_min threshold. tail_share: the 15% rule of max K.
    view_step_degrees, view_flip: rotations every step in [0, 360) x flips.
    """

    method = "tailedcore"

    def __init__(self, lof_k: int = 6, lof_drop: float = 0.15, tail_keep: float = 0.85, tail_share: float = 0.15,
                 view_step_degrees: float = 15.0, view_flip: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.lof_k = lof_k
        self.lof_drop = lof_drop
        self.tail_keep = tail_keep
        self.tail_share = tail_share
        self.view_step_degrees = view_step_degrees
        self.view_flip = view_flip

    def _policy(self, train, rng):
        return policies.tailedcore(
            train, rng, self.coreset_ratio, self.lof_k, self.lof_drop, self.tail_keep, self.tail_share, self.progress
        )


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
    params.update(overrides)
    detector = cls(**params)
    detector.memory_ = MemoryBank(arrays["memory"], arrays.get("weights"), config.get("memory_info", {}))
    return detector
