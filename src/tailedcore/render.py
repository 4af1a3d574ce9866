"""Pictures of predictions: heatmap overlays and defect-mask contours."""

from __future__ import annotations

import numpy as np

from .detector import Predictions


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


def prediction_images(predictions: Predictions, index: int, image: np.ndarray, mask: np.ndarray | None,
                      low: float, high: float) -> np.ndarray:
    """The overlay of one prediction: heatmap over the image, defect-mask contour when calibrated.

    With thresholds the heatmap shows the normalised map (0.5 = pixel threshold, at mid-scale).
    """
    amap = predictions.anomaly_maps[index]
    if predictions.thresholds is not None:
        picture = overlay(image, predictions.thresholds.normalise_pixel(amap), 0.0, 1.0)
        return draw_contour(picture, mask) if mask is not None else picture
    return overlay(image, amap, low, high)
