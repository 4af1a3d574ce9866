"""Evaluate a fitted detector on the test splits of an MVTec-layout root, class by class."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Sample, load_mask, load_mvtec
from .detector import Detector
from .metrics import METRIC_NAMES, evaluate_scores, mean_metrics


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


@dataclass
class Evaluation:
    method: str
    classes: dict[str, ClassResult]

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
        rows.append(["mean", *(self.mean[m] for m in METRIC_NAMES), sum(len(c.samples) for c in self.classes.values()), ""])
        return header, rows


def evaluate_samples(detector: Detector, name: str, samples: list[Sample], has_masks: bool) -> tuple[ClassResult, np.ndarray]:
    """Score one class's test samples -> (ClassResult, anomaly maps (m, crop, crop))."""
    predictions = detector.predict([s.path for s in samples])
    labels = np.array([s.label for s in samples], dtype=np.int64)
    masks = None
    if has_masks:
        masks = np.stack([load_mask(s.mask_path, detector.resize, detector.crop) for s in samples])
    result = evaluate_scores(labels, predictions.image_scores, masks, predictions.anomaly_maps if has_masks else None)
    return (
        ClassResult(name, samples, predictions.image_scores, labels, result.values, result.notes, has_masks),
        predictions.anomaly_maps,
    )


def evaluate(detector: Detector, data: str | os.PathLike, classes: list[str] | None = None) -> Evaluation:
    """Predict every test image of ``data`` (MVTec layout) and compute per-class metrics."""
    results = {}
    for item in load_mvtec(Path(data)):
        if classes is not None and item.name not in classes:
            continue
        if not item.test:
            continue
        results[item.name], _ = evaluate_samples(detector, item.name, item.test, item.has_masks)
    return Evaluation(detector.method, results)
