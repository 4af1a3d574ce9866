"""Pictures of predictions: heatmap overlays and defect-mask contours."""

from __future__ import annotations

import numpy as np

from ..evaluation import Example
from ..predictions import Predictions
from ..thresholds import Thresholds


def heat_colors(values: np.ndarray) -> np.ndarray:
    """(h, w) values in [0, 1] -> (h, w, 3) uint8 colours (matplotlib 'jet')."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(values, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, low: float, high: float, alpha: float = 0.45) -> np.ndarray:
    """Blend a heatmap over an image: (h, w, 3) uint8 + (h, w) map scaled from [low, high]."""
    span = max(high - low, 1e-12)
    heat = heat_colors((anomaly_map - low) / span).astype(np.float32)
    return ((1 - alpha) * image.astype(np.float32) + alpha * heat).round().astype(np.uint8)


def draw_contour(image: np.ndarray, mask: np.ndarray, color=(255, 255, 255)) -> np.ndarray:
    """Mark the boundary pixels of ``mask`` (h, w) bool on a copy of ``image`` (h, w, 3) uint8."""
    from scipy.ndimage import binary_erosion

    out = image.copy()
    out[mask & ~binary_erosion(mask, border_value=0)] = color
    return out


def picture(image: np.ndarray, anomaly_map: np.ndarray, thresholds: Thresholds | None, mask: np.ndarray | None,
            low: float, high: float) -> np.ndarray:
    """Heatmap of ``anomaly_map`` over ``image``; with thresholds, the normalised map (0.5 = pixel
    threshold, at mid-scale) and the contour of ``mask``; without, the map scaled from [low, high]."""
    if thresholds is not None:
        blended = overlay(image, thresholds.normalise_pixel(anomaly_map), 0.0, 1.0)
        return draw_contour(blended, mask) if mask is not None else blended
    return overlay(image, anomaly_map, low, high)


def prediction_images(predictions: Predictions, index: int, image: np.ndarray, mask: np.ndarray | None,
                      low: float, high: float) -> np.ndarray:
    """The overlay of prediction ``index`` over its image (see ``picture``)."""
    return picture(image, predictions.anomaly_maps[index], predictions.thresholds_of(index), mask, low, high)


def example_picture(example: Example) -> np.ndarray:
    """The overlay of a report example."""
    return picture(example.image, example.anomaly_map, example.thresholds, example.mask, example.low, example.high)
