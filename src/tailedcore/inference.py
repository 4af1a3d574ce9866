"""From test images to Predictions: patch scores, anomaly maps, products and thresholds.

The steps of a detector's ``predict`` (detector.py): batches of patch
features (B, P, D) are scored against the memory, (B, P) -> (B, rows, cols);
anomaly maps (B, crop, crop) are made of the scores; each image is assigned to
a product by its mean patch feature (B, D). Large folders run as engine tasks
over shards of whole batches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .data import ImageLoadError, collect_images, image_size, preprocess, upscale_problem
from .engine import shard_starts
from .features import FeatureBatch, FeatureExtractor
from .predictions import Predictions
from .routing import make_scorer
from .runtimes import GraphFeatures
from .scoring import anomaly_maps

log = logging.getLogger(__name__)


def check_upscale(name, size: tuple[int, int], resize: int, strict: bool) -> None:
    """Warn about an image too small for ``resize`` (``strict``: raise ImageLoadError)."""
    problem = upscale_problem(size, resize)
    if problem and strict:
        raise ImageLoadError(f"{name}: {problem}")
    if problem:
        log.warning("%s: %s", name, problem)


def check_sizes(paths: list[Path], resize: int, strict: bool) -> None:
    """Warn about each image upscaled more than ``data.MAX_UPSCALE`` times (``strict``: ImageLoadError)."""
    for path in paths:
        try:
            size = image_size(path)
        except ImageLoadError:
            continue  # reported when the image is read
        check_upscale(path, size, resize, strict)


def predict_files(detector, images, strict: bool) -> Predictions:
    """Detector.predict: image files (a list of files/folders, or one) -> Predictions."""
    paths = collect_images([images] if isinstance(images, (str, os.PathLike)) else list(images), recursive=True)
    detector.check_fitted()  # before any image is read
    sharded = detector.engine_.workers > 1
    if not sharded:
        detector.build_index()  # the shard tasks build their own
    check_sizes(paths, detector.features.resize, strict)
    if sharded and paths:
        return predict_shards(detector, paths, strict)
    failures: list[tuple[Path, str]] = []
    scored: list[Path] = []

    def batches():
        on_error = None if strict else (lambda path, reason: failures.append((path, reason)))
        for positions, batch in detector.extractor.iter_batches(paths, desc="predict", on_error=on_error):
            scored.extend(paths[i] for i in positions)
            yield batch

    predictions = predict_batches(detector, batches(), scored)
    predictions.failures = failures
    return predictions


def predict_decoded(detector, images: Sequence[Image.Image], names: Sequence[str] | None) -> Predictions:
    """Detector.predict_images: decoded images (any size and mode) -> Predictions named by ``names``."""
    if names is not None and len(names) != len(images):
        raise ValueError(f"names: {len(names)} given for {len(images)} images")
    detector.build_index()
    names = names or [f"image-{i}" for i in range(len(images))]
    settings, extractor = detector.features, detector.extractor
    for image, name in zip(images, names):
        check_upscale(name, image.size, settings.resize, strict=False)
    arrays = [preprocess(image, settings.resize, settings.crop) for image in images]
    batches = (extractor.features(extractor.standardise(arrays[i : i + settings.batch_size]))
               for i in range(0, len(arrays), settings.batch_size))
    return predict_batches(detector, batches, [Path(n) for n in names])


def score_shard(init_args: tuple, graph: tuple | None, memory: np.ndarray, weights: np.ndarray | None,
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


def predict_batches(detector, batches: Iterator[FeatureBatch], paths: list[Path]) -> Predictions:
    """Predictions of ``paths`` from their feature batches, scored here."""
    scorer = detector.scorer
    grid = detector.extractor.grid_shape
    timer = detector.stage_times_
    patch_scores, means = [], []
    while True:
        with timer.stage("test features"):
            batch = next(batches, None)
        if batch is None:
            break
        with timer.stage("test scoring"):
            patch_scores.append(scorer.score(batch.patches).reshape(-1, *grid))
            means.append(batch.patches.mean(axis=1))
    return assemble(detector, patch_scores, means, paths)


def predict_shards(detector, paths: list[Path], strict: bool) -> Predictions:
    """``predict`` as engine tasks over shards of whole batches (batch prediction of large folders):
    each task computes features and patch scores of its images; anomaly maps are made here."""
    engine = detector.engine_
    starts, per_shard = shard_starts(len(paths), detector.features.batch_size, engine.workers)
    runtime = detector.run.runtime
    graph = (detector.export_folder_, runtime, detector.features.precision) if runtime != "torch" else None
    memory = engine.put(detector.memory_.features)
    weights = engine.put(detector.memory_.weights) if detector.memory_.weights is not None else None
    scorer_args, routing = detector.search.scorer_args, detector.routing()
    with detector.stage_times_.stage("test shards"):
        results = engine.map(score_shard, [(detector.extractor.init_args, graph, memory, weights, scorer_args, routing,
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
    predictions = assemble(detector, patch_scores, means, scored)
    predictions.failures = failures
    return predictions


def image_scores_and_maps(patch_scores: np.ndarray, crop: int, blur: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, rows, cols) patch scores -> (n,) image scores (the largest patch score) and (n, crop, crop) anomaly
    maps: the scores that predictions answer with and thresholds are calibrated on."""
    return patch_scores.reshape(len(patch_scores), -1).max(axis=1), anomaly_maps(patch_scores, crop, blur)


def assemble(detector, patch_scores: list[np.ndarray], means: list[np.ndarray], paths: list[Path]) -> Predictions:
    """Predictions of ``paths`` from their patch scores, a list of (b, rows, cols) batches, and their mean
    patch features, a list of (b, D) batches (to find each image's product)."""
    grid = detector.extractor.grid_shape
    crop, blur = detector.features.crop, detector.search.blur_sigma
    products_ = detector.products_
    if not patch_scores:
        no_maps = np.empty((0, crop, crop), np.float32)
        return Predictions([], np.empty(0, np.float32), np.empty((0, *grid), np.float32), no_maps,
                           detector.thresholds_, products=None if products_ is None else np.empty(0, np.int64),
                           product_thresholds=detector.product_thresholds_)
    patch_array = np.concatenate(patch_scores)
    with detector.stage_times_.stage("test scoring"):
        image_scores, maps = image_scores_and_maps(patch_array, crop, blur)
    predictions = Predictions(paths, image_scores, patch_array, maps, detector.thresholds_,
                              product_thresholds=detector.product_thresholds_)
    if products_ is not None:
        with detector.stage_times_.stage("products"):
            products, distances = products_.assign(np.concatenate(means))
            predictions.products, predictions.product_distances = products, distances
            predictions.unknown = products_.is_unknown(products, distances, detector.calibration.unknown_factor)
    return predictions
