"""The detectors users see: ``PatchCore``, ``SoftPatch``, ``TailedCore``.

A detector is a composition of parameter objects (scikit-learn style, the
paper's defaults): its memory-bank ``policy`` (policies.py), and its
``features``, ``search``, ``calibration`` and ``run`` settings (settings.py).
It runs the one pipeline: images -> backbone -> patch features -> memory policy
on ``fit`` (training.py); images -> patch features -> nearest-neighbour scores
on ``predict`` (inference.py). The three classes differ only in their default
policy. Model files: model_file.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from .data import as_paths
from .engine import LocalEngine, RayEngine, in_run_threads, make_engine
from .features import PRECISIONS, FeatureExtractor
from .inference import check_sizes, image_scores_and_maps, predict_decoded, predict_files
from .model_file import save
from .policies import Policy, TailedCorePolicy
from .predictions import Predictions
from .products import Products
from .routing import RoutedScorer, make_scorer
from .runtimes import GRAPH_PRECISIONS, GraphFeatures
from .sampling import random_projection
from .scoring import LeftOutScorer, PatchScorer, search_option_names
from .settings import Calibration, Configurable, Features, Run, Search
from .store import FeatureCache
from .thresholds import MIN_IMAGES, Thresholds, calibrate_false_alarm, calibrate_scoped, calibrate_shared_shape
from .timing import StageTimer
from .training import build_memory, open_run

log = logging.getLogger(__name__)


class Detector(Configurable):
    """A detector: one memory-bank ``policy`` and the shared pipeline around it.

    ``Detector(policy=..., features=Features(...), search=Search(...), calibration=Calibration(...),
    run=Run(...), seed=0)``; None: the defaults (the policy: the class's). Flat keyword arguments are a
    shorthand for the settings' fields (settings.FLAT_NAMES): ``crop=224`` sets ``features.crop``,
    ``search="ivf"`` ``search.kind``. ``seed`` seeds the projection, the coreset start and the
    calibration draw. Read a setting as ``detector.features.crop`` (or the shorthand ``detector.crop``;
    ``detector.search`` is the Search object, its kind is ``detector.search.kind``).
    """

    default_policy: ClassVar[type[Policy]] = TailedCorePolicy

    def __init__(self, policy: Policy | None = None, features: Features | None = None,
                 search: Search | str | None = None, calibration: Calibration | None = None, run: Run | None = None,
                 seed: int = 0, **flat):
        if isinstance(search, str):
            search, flat = None, {"search": search, **flat}
        self.policy = self.default_policy() if policy is None else policy
        self.features, self.search = features or Features(), search or Search()
        self.calibration, self.run, self.seed = calibration or Calibration(), run or Run(), seed
        self.export_folder_: Path | None = None
        self.stage_times_ = StageTimer()
        self.products_: Products | None = None
        self.product_thresholds_: dict[int, Thresholds] = {}
        self.left_out_scores_: dict[int, np.ndarray] = {}
        self._engine: LocalEngine | RayEngine | None = None
        self._extractor: FeatureExtractor | None = None
        self._scorer: PatchScorer | RoutedScorer | None = None
        self.set_params(**flat)

    @property
    def engine_(self) -> LocalEngine | RayEngine:
        """The engine object (started on first use)."""
        if self._engine is None:
            self._engine = make_engine(self.run.engine, self.run.ray_address)
        return self._engine

    @property
    def method(self) -> str:
        return self.policy.method

    def set_params(self, **params) -> Detector:
        """settings.Configurable.set_params; caches are rebuilt as needed, a changed policy applies at the next fit."""
        super().set_params(**params)
        self._extractor = self._scorer = self._engine = None
        return self

    def check_params(self) -> None:
        """Raise ValueError naming the first parameter out of range, before any image is read."""
        super().check_params()
        name, runtime, precision = type(self).__name__, self.run.runtime, self.features.precision
        accepted = search_option_names(self.search.kind)
        for option in self.search.options or {}:
            if option not in accepted:
                raise ValueError(f"{name}.search.options: '{option}' does not apply to search '{self.search.kind}' "
                                 f"(it takes {', '.join(accepted) or 'nothing'})")
        if runtime != "torch" and precision not in GRAPH_PRECISIONS[runtime]:
            raise ValueError(f"{name}.features.precision='{precision}': runtime {runtime} offers "
                             f"{' or '.join(GRAPH_PRECISIONS[runtime])}")
        if runtime == "torch" and precision not in PRECISIONS:
            raise ValueError(f"{name}.features.precision='{precision}': the torch runtime offers "
                             f"{' or '.join(PRECISIONS)} (int8 runs an export's int8 graph: runtime onnx)")

    # -- fit ----------------------------------------------------------------
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            f, runtime = self.features, self.run.runtime
            self._extractor = FeatureExtractor(
                f.backbone, f.weights, f.resize, f.crop, f.patch_size, f.layer_dim, f.feature_dim, f.batch_size,
                self.run.progress, f.precision if runtime == "torch" else "float32", f.stages)
            if runtime != "torch":
                if self.export_folder_ is None:
                    raise ValueError(f"runtime '{runtime}' runs an exported graph: load the folder that "
                                     "'tailedcore export' wrote")
                self._extractor.graph = GraphFeatures(self.export_folder_, runtime, f.precision)
        return self._extractor

    @in_run_threads
    def fit(self, images, cache_dir: str | os.PathLike | None = None, strict: bool = False) -> Detector:
        """Fit on training images: a list of files/folders, or a dataset root (all train/good merged).

        Unreadable images are skipped with one warning each and listed in ``skipped_`` (``strict``: raise
        instead). With ``cache_dir``, computed feature batches are kept there and reused by the next run.
        """
        self.check_params()
        if self.run.runtime != "torch":
            raise ValueError(f"runtime='{self.run.runtime}': fitting runs the torch backbone; use runtime='torch'")
        paths = as_paths(images)
        if not paths:
            raise ValueError("no training images")
        check_sizes(paths, self.features.resize, strict)
        self.skipped_ = []

        def skip(path: Path, reason: str) -> None:
            log.warning("skipping unreadable training image: %s", reason)
            self.skipped_.append((path, reason))

        cache = FeatureCache(Path(cache_dir) / "features") if cache_dir is not None else None
        self.stage_times_ = StageTimer()
        projection = random_projection(self.features.feature_dim, self.features.projection_dim, self.seed)
        rows = len(paths) * int(np.prod(self.extractor.grid_shape))
        with open_run(cache_dir, self.extractor, projection, self.engine_, self.features.store_dtype, len(paths),
                      self.features.temp_bytes(rows)) as run:
            fitted = build_memory(run, paths, None if strict else skip, cache, self.policy, self.calibration.share,
                                  self.calibration.min_class, self.seed, self.run.progress, self.stage_times_)
            if self.skipped_:
                log.warning("skipped %d unreadable training image(s) of %d", len(self.skipped_), len(paths))
            self.memory_, self.diagnostics_, self.products_ = fitted.memory, fitted.diagnostics, fitted.products
            self.training_paths_, self.calibration_paths_ = fitted.kept_paths, fitted.held_out_paths
            self._scorer, self.thresholds_, self.product_thresholds_, self.left_out_scores_ = None, None, {}, {}
            if len(fitted.held_out):
                with self.stage_times_.stage("calibration"):
                    self._calibrate_held_out(fitted, run.locations)
        self.training_summary_ = {"memory_info": self.memory_.info, "training_images": len(self.training_paths_),
                                  "calibration_images": len(self.calibration_paths_)}
        log.info("%s: memory bank of %d features from %d images, %d set aside for thresholds; %d products found, "
                 "%d of them tail", self.method, len(self.memory_), len(self.training_paths_),
                 len(self.calibration_paths_), len(self.products_), self.products_.tail.sum())
        return self

    def _calibrate_held_out(self, fitted, locations: int) -> None:
        """Thresholds from the held-out training images, read from the fit's patch store; with calibration
        small_products other than "global" and scope "product", besides, those of the products too small for
        their own (``_calibrate_left_out``)."""
        patches = fitted.features.patches
        scores = np.concatenate([self.scorer.score(patches[i * locations : (i + 1) * locations][None])
                                 for i in fitted.held_out]).reshape(-1, *self.extractor.grid_shape)
        image_scores, maps = image_scores_and_maps(scores, self.features.crop, self.search.blur_sigma)
        products = self.products_.labels[fitted.held_out]
        self._set_thresholds(image_scores, maps, products, "held-out training images")
        if self.calibration.small_products != "global" and self.calibration.scope == "product":
            self._calibrate_left_out(fitted, locations, image_scores, maps, products)

    def _calibrate_left_out(self, fitted, locations: int, image_scores: np.ndarray, maps: np.ndarray,
                            products: np.ndarray) -> None:
        """Own thresholds of each product with no thresholds of its own and at least two training images kept,
        from its held-out images (scores (h,) and maps (h, crop, crop) of ``products`` (h,)) and up to
        MIN_IMAGES of its kept images in all (drawn with the seed), each scored against the memory without the
        rows made of it (exact search): their quantile at the false-alarm rate, or with small_products
        "leave-one-out-median", for a product of fewer than MIN_IMAGES such images, their median times the
        shape shared by all products (thresholds.calibrate_shared_shape). ``left_out_scores_``: per such
        product, the image scores (n,) of its images left out."""
        scorer = LeftOutScorer(self.memory_.features, self.memory_.weights, self.search.num_neighbors,
                               self.search.squared_distance)
        kept_products = self.products_.labels[fitted.kept]
        rng = np.random.default_rng([self.seed, 2])
        left_maps = {}
        for product in range(len(self.products_)):
            members = np.flatnonzero(kept_products == product)
            if product in self.product_thresholds_ or len(members) < 2:
                continue
            chosen = rng.permutation(members)[: max(MIN_IMAGES - int((products == product).sum()), 0)]
            left_out = np.stack([scorer.score(fitted.features.patches[fitted.kept[j] * locations :
                                                                       (fitted.kept[j] + 1) * locations],
                                              np.flatnonzero(fitted.row_images == j)) for j in chosen])
            scores, left_maps[product] = image_scores_and_maps(left_out.reshape(-1, *self.extractor.grid_shape),
                                                               self.features.crop, self.search.blur_sigma)
            self.left_out_scores_[product] = scores.astype(np.float64)
        calibrated = list(self.left_out_scores_)
        all_scores = np.concatenate([image_scores, *(self.left_out_scores_[p] for p in calibrated)])
        all_maps = np.concatenate([maps, *(left_maps[p] for p in calibrated)])
        all_products = np.concatenate([products, *(np.full(len(left_maps[p]), p) for p in calibrated)])
        what = {p: f"training images of product {p} ({int((products == p).sum())} held out, "
                   f"{len(self.left_out_scores_[p])} left out of the memory)" for p in calibrated}
        rate = self.calibration.false_alarm_rate
        small = {p: what[p] for p in calibrated if (all_products == p).sum() < MIN_IMAGES}
        shared = (calibrate_shared_shape(all_scores, all_maps, all_products, small, rate)
                  if self.calibration.small_products == "leave-one-out-median" else {})
        for product in calibrated:
            mine = all_products == product
            thresholds = shared.get(product) or calibrate_false_alarm(all_scores[mine], all_maps[mine], rate,
                                                                      what[product], warn=False)
            self.product_thresholds_[product] = self.stamped(thresholds)

    # -- thresholds -----------------------------------------------------------
    def calibrate(self, normal_images) -> Thresholds:
        """Set thresholds from normal images (files/folders) at the false-alarm rate: the global ones from all
        of them; with calibration scope "product", each product's from the images assigned to it (unknown
        products left out). Returns the global thresholds."""
        predictions = self.predict(normal_images)
        if predictions.failures:
            count, first = len(predictions.failures), predictions.failures[0][1]
            if not len(predictions.paths):
                raise ValueError(f"no calibration image could be read: {count} unreadable, e.g. {first}")
            log.warning("%d unreadable calibration image(s) of %d left out, e.g. %s", count,
                        count + len(predictions.paths), first)
        products = predictions.products
        if products is not None and predictions.unknown is not None:
            products = np.where(predictions.unknown, -1, products)
        self._set_thresholds(predictions.image_scores, predictions.anomaly_maps, products, "normal calibration images")
        return self.thresholds_

    def _set_thresholds(self, image_scores: np.ndarray, maps: np.ndarray, products: np.ndarray | None,
                        what: str) -> None:
        overall, own = calibrate_scoped(image_scores, maps, products, self.calibration.false_alarm_rate,
                                        self.calibration.scope, what)
        self.thresholds_ = self.stamped(overall)
        self.product_thresholds_ = {product: self.stamped(thresholds) for product, thresholds in own.items()}

    def set_thresholds(self, thresholds: Thresholds | None) -> None:
        """Use ``thresholds`` (e.g. F1-max ones) for every image: product thresholds are dropped."""
        self.thresholds_, self.product_thresholds_ = thresholds, {}

    @property
    def search_setting(self) -> dict:
        """The nearest-neighbour search scores come from: {"search": name, "search_options": {...}}."""
        return self.search.setting_dict

    def stamped(self, thresholds: Thresholds) -> Thresholds:
        """``thresholds`` with the search they were calibrated with (this detector's)."""
        return replace(thresholds, search=self.search_setting)

    # -- predict --------------------------------------------------------------
    def check_fitted(self) -> None:
        """RuntimeError unless fitted (or loaded)."""
        if not hasattr(self, "memory_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load a model")

    @property
    def scorer(self) -> PatchScorer | RoutedScorer:
        """What scores patches: (B, P, D) -> (B, P); over the whole memory, or routed by product."""
        self.check_fitted()
        if self._scorer is None:
            if self.search.scope == "product" and self.products_ is None:
                raise ValueError("search_scope='product': the model has no products (written before models kept "
                                 "them); use search_scope='global'")
            self._scorer = make_scorer(self.memory_.features, self.memory_.weights, *self.search.scorer_args,
                                       self.routing(), self.engine_)
        return self._scorer

    def build_index(self) -> None:
        """Build the nearest-neighbour indexes now (they are otherwise built at the first prediction)."""
        if isinstance(self.scorer, RoutedScorer):
            self.scorer.build()

    def routing(self) -> tuple[Products, float | None] | None:
        """routing.make_scorer's routing: (products, unknown factor) with search scope "product", else None."""
        return (self.products_, self.calibration.unknown_factor) if self.search.scope == "product" else None

    @in_run_threads
    def predict(self, images, strict: bool = False) -> Predictions:
        """Score image files: a list of files/folders (or one; folders with their sub-folders) -> Predictions.

        Unreadable files are left out and listed in ``Predictions.failures`` (``strict``: raise instead).
        Images upscaled more than ``data.MAX_UPSCALE`` times get a warning each (``strict``: ImageLoadError).
        """
        return predict_files(self, images, strict)

    @in_run_threads
    def predict_images(self, images: Sequence[Image.Image], names: Sequence[str] | None = None) -> Predictions:
        """Score decoded images (any size and mode) -> Predictions named by ``names``."""
        return predict_decoded(self, images, names)

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model (memory bank, products, thresholds, parameters) to one safetensors file."""
        save(self, path)
