"""The detectors users see: ``PatchCore``, ``SoftPatch``, ``TailedCore``.

A detector holds parameters (scikit-learn style, reference defaults) and runs
the one pipeline: images -> backbone -> patch features -> memory policy on
``fit``; images -> patch features -> nearest-neighbour scores on ``predict``.
The method is its ``policy`` (policies.py), a parameter object; the three
classes differ only in their default policy.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from ._io import remove_stale_work_folders, work_folder
from .backbones import BACKBONES, DEFAULT_STAGES, STAGE_STRIDES
from .data import ImageLoadError, collect_images, image_size, preprocess, training_images, upscale_problem
from .engine import ENGINES, LocalEngine, RayEngine, make_engine, thread_limits
from .features import PRECISIONS, FeatureBatch, FeatureExtractor
from .memory import MemoryBank, ModelFileError, read_model, write_model
from .params import Interval, OneOf, Params, check_values
from .policies import (
    POLICIES,
    PatchCorePolicy,
    Policy,
    SoftPatchPolicy,
    TailedCorePolicy,
    TrainingFeatures,
    policy_from_flat_params,
)
from .predictions import Predictions
from .products import UNKNOWN_FACTOR, Products, find_products
from .routing import SEARCH_SCOPES, RoutedScorer, make_scorer
from .runtimes import GRAPH_PRECISIONS, RUNTIMES, GraphFeatures, is_export, verify_export
from .sampling import random_projection
from .scoring import SEARCHES, PatchScorer, anomaly_maps
from .store import STORE_DTYPES, FeatureCache, ImageSubset
from .tail import LinkageTailSampler, TailInputs
from .thresholds import (
    CALIBRATION_SCOPES,
    Thresholds,
    calibrate_false_alarm,
    calibrate_per_product,
    held_out_images,
)
from .timing import StageTimer
from .training import TrainingRun

log = logging.getLogger(__name__)


def _check_upscale(name, size: tuple[int, int], resize: int, strict: bool) -> None:
    """Warn about an image too small for ``resize`` (``strict``: raise ImageLoadError)."""
    problem = upscale_problem(size, resize)
    if problem and strict:
        raise ImageLoadError(f"{name}: {problem}")
    if problem:
        log.warning("%s: %s", name, problem)


def _score_shard(init_args: tuple, graph: tuple | None, memory: np.ndarray, weights: np.ndarray | None,
                 scorer_args: tuple, routing: tuple | None,
                 paths: list[Path]) -> tuple[list[int], np.ndarray | None, np.ndarray | None, list[tuple[int, str]]]:
    """Patch scores of one shard of test images, as an engine task -> (readable positions in ``paths``,
    patch scores (k, rows, cols) float32, mean patch features (k, D) float32, (position, reason) of the
    unreadable images).

    graph: (export folder, runtime, precision) when an exported graph computes the features;
    memory (M, D), weights (M,) or None; scorer_args: routing.make_scorer's (num_neighbors,
    squared, search, search options); routing: (products, unknown factor) to search in each
    image's product's memory (routing.py), None to search the whole memory.
    """
    extractor = FeatureExtractor(*init_args)
    if graph is not None:
        extractor.graph = GraphFeatures(*graph)
    scorer = make_scorer(memory, weights, *scorer_args, routing)
    index = {path: position for position, path in enumerate(paths)}
    errors: list[tuple[int, str]] = []
    positions, scores, means = [], [], []
    for batch_positions, batch in extractor.iter_batches(paths, on_error=lambda p, r: errors.append((index[p], r))):
        positions += batch_positions
        scores.append(scorer.score(batch.patches).reshape(-1, *extractor.grid_shape))
        means.append(batch.patches.mean(axis=1))
    if not scores:
        return positions, None, None, errors
    return positions, np.concatenate(scores), np.concatenate(means), errors


# Every distinct increasing choice of strides (one to four stages).
STAGE_CHOICES = tuple(tuple(s for bit, s in enumerate(STAGE_STRIDES) if mask >> bit & 1)
                      for mask in range(1, 2 ** len(STAGE_STRIDES)))


def _in_threads(method):
    """Run a Detector method within its ``threads`` (engine.thread_limits)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with thread_limits(self.threads):
            return method(self, *args, **kwargs)

    return run


def describe_search(setting: dict) -> str:
    """A search setting ({"search": ..., "search_options": {...}}) as text, e.g. "ivf-batched (nprobe=16 rerank=2)"."""
    options = " ".join(f"{key}={value}" for key, value in sorted(setting.get("search_options", {}).items()))
    return setting["search"] + (f" ({options})" if options else "")


def _as_paths(images) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        return training_images(images)
    return collect_images(list(images))


class Detector:
    """A detector: one memory-bank ``policy`` and the shared pipeline around it.

    Parameters (defaults as in PatchCore / the TailedCore paper, except the
    backbone, EfficientNet-Lite0 instead of WideResNet-50-2 (it runs offline
    from a PyPI wheel), and ``calibration_share``, which sets 10% of the
    images of large classes aside for thresholds; 0 is the paper's protocol):
        policy: the memory-bank policy (policies.py), e.g. TailedCorePolicy(lof=LOFFilter(k=3));
            None: the class's default (PatchCore, SoftPatch, TailedCore).
        backbone, weights: backbone registry name and optional local weights file.
        stages: strides of the backbone maps that feed the patch feature (PatchCore: 8 and 16;
            from 4, 8, 16, 32); the patch grid stays at stride 8 whatever the stages.
        resize, crop: shorter side resized to ``resize``, center crop ``crop``.
        patch_size: neighbourhood aggregated per location (3 = 3x3).
        layer_dim, feature_dim: per-layer and final pooled feature sizes.
        projection_dim: dimension of the random projection for coreset and LOF.
        num_neighbors: nearest memory features averaged into a patch score.
        squared_distance: score with squared L2 (as the reference code) or L2.
        blur_sigma: Gaussian blur of the anomaly map, in pixels.
        search: nearest-neighbour backend (exact, flat, ivf, ivf-batched, hnsw; scoring.py);
        search_options: its settings, e.g. {"nprobe": 16} (ivf), {"ef_search": 64} (hnsw).
        search_scope: "global": every patch against the whole memory (the paper); "product": against the
            memory rows of its image's product (and of the products about as near; routing.py), one index
            per product; needs a model with products.
        precision: test-time feature arithmetic, float32 (reference), or what the runtime offers
            besides: bfloat16 (torch, openvino) or int8 (onnx, with an int8 graph in the export).
        store_dtype: what the fit keeps of each training patch on disk until the memory bank is
            gathered: float32 (reference) or float16 (half the disk; the memory bank is then
            rounded to float16 precision).
        batch_size: images per backbone batch.
        calibration_share: share of the training images set aside (never put in
            memory) to calibrate thresholds, of each product (products.py) of at
            least ``calibration_min_class`` images (thresholds.held_out_images).
            0 = train on everything (the paper).
        false_alarm_rate: share of normal images allowed above the threshold.
        calibration_scope: "product": besides the global thresholds, each product (products.py) with at
            least thresholds.MIN_IMAGES calibration images gets its own (the others use the global ones);
            "global": one threshold for every image.
        unknown_factor: an image farther from its product's nearest training image than this factor times
            the product's spread is an unknown product (products.py); None: never.
        seed: seeds the projection, the coreset start and the calibration draw.
        progress: show progress bars.
        engine: "local" (this process) or "ray" (features over image shards, LOF over location
            blocks, composable-coreset shards and exact search over memory shards as Ray tasks;
            the same result); ray_address: the Ray cluster (None: a local one).
        runtime: what computes test-time patch features: "torch", or the graph of an export
            (runtimes.py) run by "onnx" Runtime or "openvino"; load an export folder to use one.
        threads: CPU threads of torch, faiss and the BLAS / OpenMP pools while this detector works;
            None: torch's count, at most the cores this process may use (engine.thread_limits).
            Scores differ by about 1e-5 relative between thread counts: fix it when a figure has to
            repeat exactly.
    """

    default_policy: ClassVar[type[Policy]] = TailedCorePolicy
    constraints: ClassVar[dict] = {
        "backbone": OneOf(tuple(BACKBONES)), "stages": OneOf(STAGE_CHOICES),
        "resize": Interval(int, 1), "crop": Interval(int, 16),
        "patch_size": Interval(int, 1), "layer_dim": Interval(int, 1), "feature_dim": Interval(int, 1),
        "projection_dim": Interval(int, 1), "num_neighbors": Interval(int, 1),
        "squared_distance": OneOf((True, False)), "blur_sigma": Interval(float, 0.0),
        "search": OneOf(tuple(SEARCHES)), "precision": OneOf(PRECISIONS + ("int8",)),
        "search_scope": OneOf(SEARCH_SCOPES),
        "store_dtype": OneOf(STORE_DTYPES),
        "batch_size": Interval(int, 1),
        "calibration_share": Interval(float, 0.0, 1.0, "left"), "calibration_min_class": Interval(int, 1),
        "false_alarm_rate": Interval(float, 0.0, 1.0, "neither"), "seed": Interval(int, 0),
        "calibration_scope": OneOf(CALIBRATION_SCOPES),
        "unknown_factor": Interval(float, 0.0, closed="neither", none_ok=True),
        "progress": OneOf((True, False)), "engine": OneOf(ENGINES),
        "runtime": OneOf(RUNTIMES), "threads": Interval(int, 1, none_ok=True),
    }
    # Where the work runs, not what the model is: left out of model files.
    RUN_TIME_PARAMS: ClassVar[tuple[str, ...]] = ("engine", "ray_address", "runtime", "threads")

    def __init__(
        self,
        policy: Policy | None = None,
        backbone: str = "efficientnet-lite0",
        weights: str | None = None,
        stages: tuple[int, ...] = DEFAULT_STAGES,
        resize: int = 256,
        crop: int = 224,
        patch_size: int = 3,
        layer_dim: int = 1024,
        feature_dim: int = 1024,
        projection_dim: int = 128,
        num_neighbors: int = 1,
        squared_distance: bool = True,
        blur_sigma: float = 4.0,
        search: str = "exact",
        search_options: dict | None = None,
        search_scope: str = "global",
        precision: str = "float32",
        store_dtype: str = "float32",
        batch_size: int = 16,
        calibration_share: float = 0.1,
        calibration_min_class: int = 20,
        false_alarm_rate: float = 0.01,
        calibration_scope: str = "product",
        unknown_factor: float | None = UNKNOWN_FACTOR,
        seed: int = 0,
        progress: bool = True,
        engine: str = "local",
        ray_address: str | None = None,
        runtime: str = "torch",
        threads: int | None = None,
    ):
        self.policy = self.default_policy() if policy is None else policy
        self.backbone = backbone
        self.weights = weights
        self.stages = tuple(stages)  # a model file gives a list
        self.resize = resize
        self.crop = crop
        self.patch_size = patch_size
        self.layer_dim = layer_dim
        self.feature_dim = feature_dim
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.squared_distance = squared_distance
        self.blur_sigma = blur_sigma
        self.search = search
        self.search_options = search_options
        self.search_scope = search_scope
        self.precision = precision
        self.store_dtype = store_dtype
        self.batch_size = batch_size
        self.calibration_share = calibration_share
        self.calibration_min_class = calibration_min_class
        self.false_alarm_rate = false_alarm_rate
        self.calibration_scope = calibration_scope
        self.unknown_factor = unknown_factor
        self.seed = seed
        self.progress = progress
        self.engine = engine
        self.ray_address = ray_address
        self.runtime = runtime
        self.threads = threads
        self.export_folder_: Path | None = None
        self._engine: LocalEngine | RayEngine | None = None
        self.stage_times_ = StageTimer()
        self._extractor: FeatureExtractor | None = None
        self._scorer: PatchScorer | RoutedScorer | None = None
        self.products_: Products | None = None
        self.product_thresholds_: dict[int, Thresholds] = {}

    @property
    def engine_(self) -> LocalEngine | RayEngine:
        """The engine object (started on first use)."""
        if self._engine is None:
            self._engine = make_engine(self.engine, self.ray_address)
        return self._engine

    @property
    def method(self) -> str:
        return self.policy.method

    # -- parameters -------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(Detector.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """Parameters by name; ``deep``: the policy's too, as ``policy__lof__k`` etc."""
        params = {name: getattr(self, name) for name in self._param_names()}
        if deep:
            params.update({f"policy__{key}": value for key, value in self.policy.get_params(deep=True).items()})
        return params

    def set_params(self, **params) -> Detector:
        """Change parameters (e.g. search, precision on a fitted model; ``policy__lof__k=3``).

        Caches are rebuilt as needed; a changed policy applies at the next fit.
        """
        nested = {key.removeprefix("policy__"): params.pop(key) for key in list(params) if key.startswith("policy__")}
        unknown = set(params) - set(self._param_names())
        if unknown:
            raise ValueError(f"unknown parameters: {', '.join(sorted(unknown))}")
        if "search" in params and "search_options" not in params and params["search"] != self.search:
            params["search_options"] = None  # options belong to the search they were given for
        for name, value in params.items():
            setattr(self, name, value)
        if nested:
            self.policy = self.policy.with_params(**nested)
        self._extractor = None
        self._scorer = None
        self._engine = None
        return self

    def check_params(self) -> None:
        """Raise ValueError naming the first parameter out of range (policy included), before any image is read."""
        check_values(type(self).__name__, self.get_params(deep=False), self.constraints)
        if self.runtime != "torch" and self.precision not in GRAPH_PRECISIONS[self.runtime]:
            raise ValueError(f"{type(self).__name__}.precision='{self.precision}': runtime {self.runtime} offers "
                             f"{' or '.join(GRAPH_PRECISIONS[self.runtime])}")
        if self.runtime == "torch" and self.precision not in PRECISIONS:
            raise ValueError(f"{type(self).__name__}.precision='{self.precision}': the torch runtime offers "
                             f"{' or '.join(PRECISIONS)} (int8 runs an export's int8 graph: runtime onnx)")
        if not isinstance(self.policy, Policy):
            raise ValueError(f"{type(self).__name__}.policy: expected a Policy, got {type(self.policy).__name__}")
        self.policy.check()

    def params_config(self) -> dict:
        """The parameters as JSON: the pipeline's by name, the policy as ``Params.to_config``."""
        return {**{k: v for k, v in self.get_params(deep=False).items() if k != "policy"},
                "policy": self.policy.to_config()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params(deep=False).items())})"

    # -- pipeline ---------------------------------------------------------
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            torch_precision = self.precision if self.runtime == "torch" else "float32"
            self._extractor = FeatureExtractor(
                self.backbone, self.weights, self.resize, self.crop, self.patch_size,
                self.layer_dim, self.feature_dim, self.batch_size, self.progress, torch_precision, self.stages,
            )
            if self.runtime != "torch":
                if self.export_folder_ is None:
                    raise ValueError(f"runtime '{self.runtime}' runs an exported graph: load the folder that "
                                     "'tailedcore export' wrote")
                self._extractor.graph = GraphFeatures(self.export_folder_, self.runtime, self.precision)
        return self._extractor

    @_in_threads
    def fit(self, images, cache_dir: str | os.PathLike | None = None, strict: bool = False) -> Detector:
        """Fit on training images: a list of files/folders, or a dataset root (all train/good merged).

        Unreadable images are skipped with one warning each and listed in
        ``skipped_`` (``strict``: raise instead). With ``cache_dir``, computed
        feature batches are kept there and reused by the next run.
        """
        self.check_params()
        if self.runtime != "torch":
            raise ValueError(f"runtime='{self.runtime}': fitting runs the torch backbone; use runtime='torch'")
        paths = _as_paths(images)
        if not paths:
            raise ValueError("no training images")
        self._check_sizes(paths, strict)
        self.skipped_ = []

        def skip(path: Path, reason: str) -> None:
            log.warning("skipping unreadable training image: %s", reason)
            self.skipped_.append((path, reason))

        cache = None
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            cache = FeatureCache(Path(cache_dir) / "features")
        self.stage_times_ = StageTimer()
        projection = random_projection(self.feature_dim, self.projection_dim, self.seed)
        removed, freed = remove_stale_work_folders(cache_dir)
        if removed:
            log.info("removed %d folder(s) of killed runs from %s, freeing %.1f MiB", removed,
                     cache_dir or tempfile.gettempdir(), freed / 2**20)
        with (work_folder(cache_dir) as work,
              TrainingRun(self.extractor, work, projection, self.engine_, self.store_dtype) as run):
            log.info("temporary feature files: %s, about %.2f GiB for %d images (removed at the end)", work,
                     self.temp_bytes_estimate(len(paths)) / 2**30, len(paths))
            self._fit_with(run, paths, None if strict else skip, cache)
        log.info("%s: memory bank of %d features from %d images%s", self.method, len(self.memory_),
                 len(self.training_paths_),
                 f"; {len(self.calibration_paths_)} images set aside for thresholds" if self.calibration_paths_ else "")
        return self

    def temp_bytes_estimate(self, images: int) -> int:
        """Bytes of the temporary files of a fit on ``images`` images: patch features and projections
        (tail views add their own, which grow with the tail)."""
        rows = images * self.extractor.grid_shape[0] * self.extractor.grid_shape[1]
        return rows * (self.feature_dim * np.dtype(self.store_dtype).itemsize + self.projection_dim * 4)

    def _fit_with(self, run: TrainingRun, paths: list[Path], on_error, cache: FeatureCache | None) -> None:
        """The fit itself; every file it writes belongs to ``run``."""
        rng = np.random.default_rng(self.seed)
        grid = self.extractor.grid_shape
        patches_per_image = grid[0] * grid[1]
        with self.stage_times_.stage("features"):
            extracted = run.extract(paths, on_error, cache)
        if self.skipped_:
            log.warning("skipped %d unreadable training image(s) of %d", len(self.skipped_), len(paths))
        paths = [paths[i] for i in extracted.readable]
        with self.stage_times_.stage("products"):
            estimator = self.policy.tail if isinstance(getattr(self.policy, "tail", None), LinkageTailSampler) \
                else LinkageTailSampler()
            products = find_products(TailInputs(extracted.embeddings, extracted.mean_patches), paths, estimator)
        held_out = held_out_images(products.labels, self.calibration_share, self.calibration_min_class,
                                   self.seed)
        kept = np.setdiff1d(np.arange(len(paths)), held_out)
        kept_paths = [paths[i] for i in kept]
        features = extracted.features
        projected = run.take_images(features.projected, kept) if len(held_out) else features.projected
        transforms = self.policy.view_transforms()
        train = TrainingFeatures(
            ImageSubset(features.patches, kept, patches_per_image), projected, extracted.embeddings[kept],
            extracted.mean_patches[kept], run.view_maker(kept_paths, transforms, self.batch_size, self.progress),
            len(transforms), self.stage_times_, self.engine_, products.labels[kept],
        )
        self.training_paths_ = kept_paths
        self.calibration_paths_ = [paths[i] for i in held_out]
        result = self.policy.build(train, rng, self.progress)
        self.memory_, self.diagnostics_ = result.memory, result.diagnostics
        products.memory_products = products.labels[kept][result.row_images]
        self.products_ = products
        self._scorer, self.thresholds_, self.product_thresholds_ = None, None, {}
        if len(held_out):
            with self.stage_times_.stage("calibration"):
                scores = np.concatenate([
                    self.scorer.score(features.patches.read(i * patches_per_image, (i + 1) * patches_per_image)[None])
                    for i in held_out]).reshape(-1, *grid)
                self._set_thresholds(scores.reshape(len(scores), -1).max(axis=1),
                                     anomaly_maps(scores, self.crop, self.blur_sigma), products.labels[held_out],
                                     "held-out training images")
        self.training_summary_ = {"memory_info": self.memory_.info, "training_images": len(kept),
                                  "calibration_images": len(held_out)}
        log.info("%d products found, %d of them tail (%d images)", len(products), products.tail.sum(),
                 products.sizes[products.tail].sum())

    def calibrate(self, normal_images) -> Thresholds:
        """Set thresholds from normal images (files/folders) at ``false_alarm_rate``: the global ones from all
        of them; with ``calibration_scope`` "product", each product's from the images assigned to it (unknown
        products left out). Returns the global thresholds."""
        predictions = self.predict(normal_images)
        products = predictions.products
        if products is not None and predictions.unknown is not None:
            products = np.where(predictions.unknown, -1, products)
        self._set_thresholds(predictions.image_scores, predictions.anomaly_maps, products,
                             "normal calibration images")
        return self.thresholds_

    def _set_thresholds(self, image_scores: np.ndarray, maps: np.ndarray, products: np.ndarray | None,
                        what: str) -> None:
        """Global and per-product thresholds from normal images: scores (m,), maps (m, h, w), products (m,)
        int (-1: none; None: a model without products)."""
        self.thresholds_ = self.stamped(calibrate_false_alarm(image_scores, maps, self.false_alarm_rate, what))
        self.product_thresholds_ = {}
        if self.calibration_scope == "product" and products is not None:
            chosen = np.asarray(products) >= 0
            self.product_thresholds_ = {
                product: self.stamped(thresholds) for product, thresholds in calibrate_per_product(
                    image_scores[chosen], maps[chosen], np.asarray(products)[chosen], self.false_alarm_rate,
                    what).items()}

    def set_thresholds(self, thresholds: Thresholds | None) -> None:
        """Use ``thresholds`` (e.g. F1-max ones) for every image: product thresholds are dropped."""
        self.thresholds_, self.product_thresholds_ = thresholds, {}

    @property
    def search_setting(self) -> dict:
        """The nearest-neighbour search scores come from: {"search": name, "search_options": {...}}."""
        return {"search": self.search, "search_options": dict(self.search_options or {})}

    def stamped(self, thresholds: Thresholds) -> Thresholds:
        """``thresholds`` with the search they were calibrated with (this detector's)."""
        return replace(thresholds, search=self.search_setting)

    def threshold_search_mismatch(self) -> str | None:
        """Why the thresholds may not fit the scores: they were calibrated with another search (or None)."""
        calibrated = self.thresholds_.search if self.thresholds_ is not None else None
        if calibrated is None or calibrated == self.search_setting:
            return None
        return (f"thresholds were calibrated with search {describe_search(calibrated)}, scores now come from "
                f"{describe_search(self.search_setting)}: raw scores differ by up to a few percent; calibrate again "
                "with this search for decisions that match")

    def build_index(self) -> None:
        """Build the nearest-neighbour indexes now (they are otherwise built at the first prediction)."""
        scorer = self.scorer
        if isinstance(scorer, RoutedScorer):
            scorer.build()

    def _check_fitted(self) -> None:
        if not hasattr(self, "memory_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load a model")

    @property
    def scorer(self) -> PatchScorer | RoutedScorer:
        """What scores patches: (B, P, D) -> (B, P); over the whole memory, or routed by product."""
        self._check_fitted()
        if self._scorer is None:
            if self.search_scope == "product" and self.products_ is None:
                raise ValueError("search_scope='product': the model has no products (written before models kept "
                                 "them); use search_scope='global'")
            self._scorer = make_scorer(self.memory_.features, self.memory_.weights, *self._scorer_args(),
                                       self._routing(), self.engine_)
        return self._scorer

    def _scorer_args(self) -> tuple:
        """routing.make_scorer's (num_neighbors, squared, search, search options)."""
        return self.num_neighbors, self.squared_distance, self.search, self.search_options or {}

    def _routing(self) -> tuple[Products, float | None] | None:
        """routing.make_scorer's routing: (products, unknown factor) with search scope "product", else None."""
        return (self.products_, self.unknown_factor) if self.search_scope == "product" else None

    def _predictions(self, batches: Iterator[FeatureBatch], paths: list[Path]) -> Predictions:
        scorer = self.scorer
        grid = self.extractor.grid_shape
        patch_scores, means = [], []
        while True:
            with self.stage_times_.stage("test features"):
                batch = next(batches, None)
            if batch is None:
                break
            with self.stage_times_.stage("test scoring"):
                patch_scores.append(scorer.score(batch.patches).reshape(-1, *grid))
                means.append(batch.patches.mean(axis=1))
        return self._assemble(patch_scores, means, paths)

    def _assemble(self, patch_scores: list[np.ndarray], means: list[np.ndarray], paths: list[Path]) -> Predictions:
        """Predictions of ``paths`` from their patch scores, a list of (b, rows, cols) batches, and their mean
        patch features, a list of (b, D) batches (to find each image's product)."""
        grid = self.extractor.grid_shape
        with self.stage_times_.stage("test scoring"):
            maps = [anomaly_maps(scores, self.crop, self.blur_sigma) for scores in patch_scores]
        if not patch_scores:
            no_maps = np.empty((0, self.crop, self.crop), np.float32)
            return Predictions([], np.empty(0, np.float32), np.empty((0, *grid), np.float32), no_maps,
                               self.thresholds_, products=None if self.products_ is None else np.empty(0, np.int64),
                               product_thresholds=self.product_thresholds_)
        patch_array = np.concatenate(patch_scores)
        predictions = Predictions(paths, patch_array.reshape(len(paths), -1).max(axis=1), patch_array,
                                  np.concatenate(maps), self.thresholds_, product_thresholds=self.product_thresholds_)
        if self.products_ is not None:
            with self.stage_times_.stage("products"):
                products, distances = self.products_.assign(np.concatenate(means))
                predictions.products, predictions.product_distances = products, distances
                predictions.unknown = self.products_.is_unknown(products, distances, self.unknown_factor)
        return predictions

    @_in_threads
    def predict(self, images, strict: bool = False) -> Predictions:
        """Score image files: a list of files/folders (or one; folders with their sub-folders) -> Predictions.

        Unreadable files are left out and listed in ``Predictions.failures``
        (``strict``: raise instead). Images upscaled more than ``data.MAX_UPSCALE``
        times get a warning each (``strict``: ImageLoadError).
        """
        paths = collect_images([images] if isinstance(images, (str, os.PathLike)) else list(images), recursive=True)
        self._check_fitted()  # before any image is read
        sharded = self.engine_.workers > 1
        if not sharded:
            self.build_index()  # the shard tasks build their own
        self._check_sizes(paths, strict)
        if sharded:
            return self._predict_shards(paths, strict)
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

    def _check_sizes(self, paths: list[Path], strict: bool) -> None:
        """Warn about each image upscaled more than ``data.MAX_UPSCALE`` times (``strict``: ImageLoadError)."""
        for path in paths:
            try:
                size = image_size(path)
            except ImageLoadError:
                continue  # reported when the image is read
            _check_upscale(path, size, self.resize, strict)

    def _predict_shards(self, paths: list[Path], strict: bool) -> Predictions:
        """``predict`` as engine tasks over shards of whole batches (batch prediction of large folders):
        each task computes features and patch scores of its images; anomaly maps are made here."""
        engine = self.engine_
        per_shard = -(-len(paths) // (self.batch_size * 2 * engine.workers)) * self.batch_size
        starts = list(range(0, len(paths), per_shard))
        graph = (self.export_folder_, self.runtime, self.precision) if self.runtime != "torch" else None
        memory = engine.put(self.memory_.features)
        weights = engine.put(self.memory_.weights) if self.memory_.weights is not None else None
        scorer_args, routing = self._scorer_args(), self._routing()
        with self.stage_times_.stage("test shards"):
            results = engine.map(_score_shard, [(self.extractor.init_args, graph, memory, weights, scorer_args, routing,
                                                 paths[start : start + per_shard]) for start in starts])
        failures, scored, patch_scores, means = [], [], [], []
        for start, (positions, scores, shard_means, errors) in zip(starts, results):
            for position, reason in errors:
                if strict:
                    raise ImageLoadError(reason)
                failures.append((paths[start + position], reason))
            scored += [paths[start + position] for position in positions]
            if scores is not None:
                patch_scores.append(scores)
                means.append(shard_means)
        predictions = self._assemble(patch_scores, means, scored)
        predictions.failures = failures
        return predictions

    @_in_threads
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
        batches = (extractor.features(extractor.standardise(arrays[i : i + self.batch_size]))
                   for i in range(0, len(arrays), self.batch_size))
        return self._predictions(batches, [Path(n) for n in names])

    # -- persistence ------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model (memory bank + parameters) to one safetensors file."""
        if not hasattr(self, "memory_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: nothing to save")
        arrays = {"memory": self.memory_.features}
        if self.memory_.weights is not None:
            arrays["weights"] = self.memory_.weights
        if self.products_ is not None:
            arrays.update(self.products_.arrays())
        config = {
            "method": self.method,
            "params": {k: v for k, v in self.params_config().items() if k not in self.RUN_TIME_PARAMS},
            **self.training_summary_,
            "thresholds": self.thresholds_.to_dict() if self.thresholds_ else None,
            "product_thresholds": {str(p): t.to_dict() for p, t in self.product_thresholds_.items()},
            "products": self.products_.config() if self.products_ is not None else None,
            "torch_version": torch.__version__,
        }
        write_model(path, arrays, config)


class PatchCore(Detector):
    """PatchCore: memory = greedy coreset of all training patches (policies.PatchCorePolicy)."""

    default_policy = PatchCorePolicy


class SoftPatch(Detector):
    """SoftPatch: patch-wise LOF denoising, coreset, LOF-weighted scores (policies.SoftPatchPolicy)."""

    default_policy = SoftPatchPolicy


class TailedCore(Detector):
    """TailedCore: tail images kept whole with rotated/flipped views; LOF-denoised rest
    (policies.TailedCorePolicy; the tail estimator defaults to linkage, the paper's is PaperTailSampler)."""

    default_policy = TailedCorePolicy


METHODS: dict[str, type[Detector]] = {cls.default_policy.method: cls for cls in (PatchCore, SoftPatch, TailedCore)}

def load(path: str | os.PathLike, **overrides) -> Detector:
    """Load a saved model, or an export folder (its graph then computes the test-time features, unless
    ``runtime="torch"``); ``overrides`` replace run-time parameters (e.g. search, batch_size)."""
    if is_export(path):
        info = verify_export(path)
        # The graph runs in float32 unless asked otherwise, whatever arithmetic the fit used.
        detector = load(Path(path) / info["model"], **{"runtime": info["format"], "precision": "float32", **overrides})
        detector.export_folder_ = Path(path)
        return detector
    arrays, config = read_model(path)
    method = config.get("method")
    if method not in METHODS:
        raise ModelFileError(f"{path}: unknown method '{method}'")
    cls = METHODS[method]
    params = dict(config.get("params", {}))
    try:
        policy = (Params.from_config(params.pop("policy")) if "policy" in params
                  else policy_from_flat_params(method, params))
    except (TypeError, ValueError, KeyError) as error:
        raise ModelFileError(f"{path}: invalid policy parameters ({error})") from error
    if not isinstance(policy, POLICIES[method]):
        raise ModelFileError(f"{path}: a {type(policy).__name__} is not a {method} policy")
    unknown = set(params) - set(cls._param_names())
    if unknown:
        raise ModelFileError(f"{path}: unknown parameters {sorted(unknown)}")
    wrong = set(overrides) - set(cls._param_names())
    if wrong:
        raise ValueError(f"unknown parameters for {method}: {', '.join(sorted(wrong))}")
    detector = cls(policy=policy, **params).set_params(**overrides)
    detector.memory_ = MemoryBank(arrays["memory"], arrays.get("weights"), config.get("memory_info", {}))
    detector.thresholds_ = Thresholds.from_dict(config["thresholds"]) if config.get("thresholds") else None
    detector.product_thresholds_ = {int(p): Thresholds.from_dict(t)
                                    for p, t in (config.get("product_thresholds") or {}).items()}
    detector.training_summary_ = {k: config.get(k) for k in ("memory_info", "training_images", "calibration_images")}
    if config.get("products"):
        try:
            detector.products_ = Products.from_model(arrays, config["products"])
        except (TypeError, ValueError, KeyError) as error:
            raise ModelFileError(f"{path}: invalid products ({error})") from error
    else:
        log.info("%s: written before models kept their products; one threshold and one search for all images",
                 path)
    detector.check_params()  # overrides included
    return detector
