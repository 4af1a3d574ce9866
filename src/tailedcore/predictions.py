"""What a detector returns for m images: raw scores, maps and, when calibrated, decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .thresholds import Thresholds, defect_masks


@dataclass
class Predictions:
    """Scores of m images.

    image_scores: (m,) float32 raw; patch_scores: (m, h, w) float32;
    anomaly_maps: (m, crop, crop) float32 (upsampled, blurred patch scores).
    ``failures``: (path, reason) of images that could not be read (not in m).
    With ``thresholds`` (a calibrated model): ``normalised_scores`` (m,) float64
    in [0, 1), x / (1 + x) of x = raw / threshold (0.5 = threshold, ranking kept),
    ``decisions`` (m,) bool (True = defect) and ``defect_masks(min_area)`` (m, crop, crop) bool, empty for
    images decided ok.
    """

    paths: list[Path]
    image_scores: np.ndarray
    patch_scores: np.ndarray
    anomaly_maps: np.ndarray
    thresholds: Thresholds | None = None
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def _require_thresholds(self) -> Thresholds:
        if self.thresholds is None:
            raise RuntimeError("the model has no thresholds: calibrate it (fit with a calibration share, "
                               "or calibrate() with normal images)")
        return self.thresholds

    @property
    def normalised_scores(self) -> np.ndarray:
        return self._require_thresholds().normalise_image(self.image_scores)

    @property
    def decisions(self) -> np.ndarray:
        return self.image_scores >= self._require_thresholds().image

    def defect_masks(self, min_area: int = 16) -> np.ndarray:
        """Pixels above the pixel threshold, blobs under ``min_area`` removed; empty for images decided ok."""
        masks = defect_masks(self.anomaly_maps, self._require_thresholds().pixel, min_area)
        return masks & self.decisions[:, None, None]
