"""Anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO and image F1-max.

All values are fractions in [0, 1]. A metric that cannot be computed (one
label only, no masks) is ``None`` with the reason in ``MetricResult.notes``;
it is never reported as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.measure import label as connected_components
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC of image scores (m,) against labels (m,) in {0, 1}; None with one label only."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Best F1 over all thresholds of the image scores; None without anomalous images."""
    labels = np.asarray(labels)
    if labels.sum() == 0:
        return None
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """AUROC over all pixels: masks (m, h, w) bool, maps (m, h, w); None with one pixel class."""
    masks = np.asarray(masks, dtype=bool).ravel()
    if masks.all() or not masks.any():
        return None
    return float(roc_auc_score(masks, np.asarray(maps, dtype=np.float32).ravel()))


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-region-overlap curve: (FPR of defect-free pixels, mean overlap over defect regions).

    Each connected defect region counts equally: an anomalous pixel weighs
    1 / (its region's area x number of regions), so the weighted true-positive
    rate of a ROC curve is the mean overlap over regions (PRO). None without
    both defect and defect-free pixels.
    """
    masks = np.asarray(masks, dtype=bool)
    if not masks.any() or masks.all():
        return None
    weights = np.ones(masks.shape, dtype=np.float64)
    n_regions = 0
    for index, mask in enumerate(masks):
        if not mask.any():
            continue
        regions = connected_components(mask, connectivity=2)
        areas = np.bincount(regions.ravel())
        weights[index][mask] = 1.0 / areas[regions[mask]]
        n_regions += len(areas) - 1
    weights[masks] /= n_regions
    fpr, pro, _ = roc_curve(masks.ravel(), np.asarray(maps, dtype=np.float32).ravel(),
                            sample_weight=weights.ravel())
    return fpr, pro


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """Area under the PRO curve (``pro_curve``) up to ``fpr_limit`` FPR, normalised to [0, 1]."""
    return area_under_pro(pro_curve(masks, maps), fpr_limit)


def area_under_pro(curve: tuple[np.ndarray, np.ndarray] | None, fpr_limit: float = 0.3) -> float | None:
    if curve is None:
        return None
    fpr, pro = curve
    cut = np.searchsorted(fpr, fpr_limit, side="right")
    fpr_part = np.concatenate([fpr[:cut], [fpr_limit]])
    pro_part = np.concatenate([pro[:cut], [np.interp(fpr_limit, fpr, pro)]])
    return float(auc(fpr_part, pro_part) / fpr_limit)


@dataclass
class MetricResult:
    """Metrics of one class: values (name -> fraction or None), notes (why a value is None) and
    the curves behind them: image ROC and pixel PRO as (x, y) arrays, or None."""

    values: dict[str, float | None]
    notes: list[str] = field(default_factory=list)
    roc: tuple[np.ndarray, np.ndarray] | None = None
    pro: tuple[np.ndarray, np.ndarray] | None = None


def evaluate_scores(labels: np.ndarray, image_scores: np.ndarray, masks: np.ndarray | None = None,
                    maps: np.ndarray | None = None) -> MetricResult:
    """All metrics of one class. ``masks`` None = the class has no pixel ground truth."""
    labels = np.asarray(labels)
    notes = []
    values = {
        "image_auroc": image_auroc(labels, image_scores),
        "pixel_auroc": None,
        "aupro": None,
        "image_f1_max": f1_max(labels, image_scores),
    }
    roc = pro = None
    if values["image_auroc"] is None:
        notes.append("image AUROC needs normal and anomalous test images")
    else:
        roc = roc_curve(labels, image_scores)[:2]
    if masks is None or maps is None:
        notes.append("no pixel masks: image-level metrics only")
    else:
        values["pixel_auroc"] = pixel_auroc(masks, maps)
        pro = pro_curve(masks, maps)
        values["aupro"] = area_under_pro(pro)
        if values["pixel_auroc"] is None:
            notes.append("pixel metrics need both defect and defect-free pixels")
    return MetricResult(values, notes, roc, pro)


def mean_metrics(per_class: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """Mean of each metric over the classes where it is defined (None if none)."""
    means = {}
    for name in METRIC_NAMES:
        defined = [v[name] for v in per_class.values() if v.get(name) is not None]
        means[name] = float(np.mean(defined)) if defined else None
    return means
