"""Evaluate a fitted detector on the test splits of an MVTec-layout root, class by class."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Sample, image_size, load_image, load_mask, load_mvtec
from .detector import Detector
from .metrics import METRIC_NAMES, evaluate_scores, mean_metrics
from .predictions import Predictions
from .thresholds import Thresholds, calibrate_f1

log = logging.getLogger(__name__)


@dataclass
class Example:
    """A test image shown in reports, with what its picture is drawn from.

    image: (crop, crop, 3) uint8; anomaly_map: (crop, crop) float32; mask:
    (crop, crop) bool defect mask (calibrated models) or None; low, high: the
    class's anomaly-map range, so a class's pictures share one colour scale.
    """

    caption: str
    image: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray | None
    thresholds: Thresholds | None
    low: float
    high: float


@dataclass
class ClassResult:
    """Scores and metrics of one class.

    image_scores, labels: (m,); metrics: name -> fraction or None.
    ``samples`` are the scored test images in order.
    """

    name: str
    samples: list[Sample]
    image_scores: np.ndarray
    labels: np.ndarray
    metrics: dict[str, float | None]
    notes: list[str] = field(default_factory=list)
    has_masks: bool = False
    roc: tuple[np.ndarray, np.ndarray] | None = None
    pro: tuple[np.ndarray, np.ndarray] | None = None
    examples: list[Example] = field(default_factory=list)


@dataclass
class Evaluation:
    method: str
    classes: dict[str, ClassResult]
    thresholds: Thresholds | None = None

    @property
    def mean(self) -> dict[str, float | None]:
        return mean_metrics({name: c.metrics for name, c in self.classes.items()})

    def metrics_json(self) -> dict:
        """The ``metrics.json`` document: method, per-class metrics, means."""
        return {
            "method": self.method,
            "classes": {name: dict(c.metrics) for name, c in self.classes.items()},
            "mean": self.mean,
        }

    def table(self) -> tuple[list[str], list[list]]:
        """Header and rows (one per class, then the mean) for CSV/Markdown."""
        header = ["class", *METRIC_NAMES, "test images", "note"]
        rows = [
            [name, *(c.metrics[m] for m in METRIC_NAMES), len(c.samples), "; ".join(c.notes)]
            for name, c in self.classes.items()
        ]
        total = sum(len(c.samples) for c in self.classes.values())
        rows.append(["mean", *(self.mean[m] for m in METRIC_NAMES), total, ""])
        return header, rows


def _thin(curve: tuple[np.ndarray, np.ndarray] | None, points: int = 400):
    """At most ``points`` points of a curve, enough to draw it."""
    if curve is None or len(curve[0]) <= points:
        return curve
    keep = np.unique(np.linspace(0, len(curve[0]) - 1, points).round().astype(int))
    return curve[0][keep], curve[1][keep]


def _examples(predictions: Predictions, name: str, samples: list[Sample], resize: int, crop: int,
              count: int = 2) -> list[Example]:
    """The ``count`` highest- and lowest-scored images of a class, with captions."""
    order = np.argsort(-predictions.image_scores)
    chosen = [(i, "highest") for i in order[:count]] + [(i, "lowest") for i in order[::-1][:count]
                                                         if i not in order[:count]]
    low, high = float(predictions.anomaly_maps.min()), float(predictions.anomaly_maps.max())
    masks = predictions.defect_masks() if predictions.thresholds is not None else None
    return [Example(f"{name}/{samples[index].defect_type} {samples[index].path.name} ({rank}, "
                    f"{predictions.image_scores[index]:.3g})",
                    load_image(samples[index].path, resize, crop), predictions.anomaly_maps[index],
                    None if masks is None else masks[index], predictions.thresholds_of(index), low, high)
            for index, rank in chosen]


@dataclass
class LabeledScores:
    """Predictions of labeled test samples, aligned for metrics.

    ``samples``: the readable ones, in the order of ``predictions`` and
    ``labels`` (m,). ``masks``, ``maps``: (k, crop, crop) of the k samples with
    pixel ground truth (normal, or defective with a mask); None without masks.
    """

    samples: list[Sample]
    predictions: Predictions
    labels: np.ndarray
    masks: np.ndarray | None
    maps: np.ndarray | None
    notes: list[str]


def score_labeled(detector: Detector, samples: list[Sample], has_masks: bool) -> LabeledScores:
    """Predict ``samples`` and align labels and masks with what could be scored.

    Unreadable images are left out (noted); in a class with pixel masks,
    defective images without a mask are left out of the pixel arrays (noted),
    never counted as defect-free.
    """
    predictions = detector.predict([s.path for s in samples])
    notes = []
    if predictions.failures:
        scored = set(predictions.paths)
        samples = [s for s in samples if s.path in scored]
        notes.append(f"{len(predictions.failures)} unreadable test image(s) left out, e.g. "
                     f"{predictions.failures[0][1]}")
    labels = np.array([s.label for s in samples], dtype=np.int64)
    masks = maps = None
    if has_masks and samples:
        with_truth = np.array([s.label == 0 or s.mask_path is not None for s in samples])
        if not with_truth.all():
            missing = [s.path for s, ok in zip(samples, with_truth) if not ok]
            notes.append(f"{len(missing)} defective image(s) without a mask left out of pixel metrics, "
                         f"e.g. {missing[0]}")
        masks = np.stack([load_mask(s.mask_path, detector.resize, detector.crop,
                                    image_size(s.path) if s.mask_path is not None else None)
                          for s, ok in zip(samples, with_truth) if ok])
        maps = predictions.anomaly_maps[with_truth]
    return LabeledScores(samples, predictions, labels, masks, maps, notes)


def _unscored(name: str, notes: list[str]) -> ClassResult:
    """The result of a class without a scored test image: metrics of None and the reason in the notes."""
    return ClassResult(name, [], np.empty(0, np.float32), np.empty(0, np.int64),
                       {metric: None for metric in METRIC_NAMES}, notes)


def evaluate_samples(detector: Detector, name: str, samples: list[Sample], has_masks: bool) -> ClassResult:
    """Score one class's test samples and compute its metrics, curves and report examples.

    Unreadable images and defective images without a mask are handled as in
    ``score_labeled``; a class with no readable image gets metrics of None.
    """
    if not samples:
        return _unscored(name, ["no test images"])
    scored = score_labeled(detector, samples, has_masks)
    predictions = scored.predictions
    if not scored.samples:
        return _unscored(name, scored.notes + ["no readable test image"])
    result = evaluate_scores(scored.labels, predictions.image_scores, scored.masks, scored.maps)
    return ClassResult(name, scored.samples, predictions.image_scores, scored.labels, result.values,
                       scored.notes + result.notes, has_masks, _thin(result.roc), _thin(result.pro),
                       _examples(predictions, name, scored.samples, detector.resize, detector.crop))


def evaluate(detector: Detector, data: str | os.PathLike, classes: list[str] | None = None) -> Evaluation:
    """Predict every test image of ``data`` (MVTec layout) and compute per-class metrics.

    Every class is in the result, one without a readable test image with metrics of None and a
    note; no readable test image in any class is a ValueError.
    """
    results = {}
    for item in load_mvtec(Path(data), need_train=False):
        if classes is None or item.name in classes:
            results[item.name] = evaluate_samples(detector, item.name, item.test, item.has_masks)
    if not any(result.samples for result in results.values()):
        raise ValueError(f"{data}: no readable test image in any class")
    return Evaluation(detector.method, results, detector.thresholds_)


def calibrate_on_validation(detector: Detector, data: str | os.PathLike) -> Thresholds:
    """F1-max thresholds from the labeled test splits of ``data`` (MVTec layout; no train/good needed).

    Images are filtered as in evaluation (unreadable ones and defects without
    a mask are left out, with a warning); the pixel threshold comes from the
    classes with masks, or from normal images when no class has any.
    """
    parts = {c.name: score_labeled(detector, c.test, c.has_masks)
             for c in load_mvtec(Path(data), need_train=False) if c.test}
    for name, part in parts.items():
        for note in part.notes:
            log.warning("%s: %s", name, note)
    parts = {name: part for name, part in parts.items() if part.samples}
    if not parts:
        raise ValueError(f"{data}: no readable test images to calibrate on")
    labels = np.concatenate([p.labels for p in parts.values()])
    scores = np.concatenate([p.predictions.image_scores for p in parts.values()])
    with_truth = [p for p in parts.values() if p.masks is not None and p.masks.any()]
    if with_truth:
        masks = np.concatenate([p.masks for p in with_truth])
        maps = np.concatenate([p.maps for p in with_truth])
        return detector.stamped(calibrate_f1(labels, scores, masks, maps))
    maps = np.concatenate([p.predictions.anomaly_maps for p in parts.values()])
    return detector.stamped(calibrate_f1(labels, scores, None, maps))
