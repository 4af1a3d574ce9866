"""What a detector returns for m images: raw scores, maps and, when calibrated, decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .thresholds import Thresholds, defect_masks, normalise, thresholds_of_product

UNKNOWN = "unknown product"


@dataclass
class Predictions:
    """Scores of m images.

    image_scores: (m,) float32 raw; patch_scores: (m, h, w) float32;
    anomaly_maps: (m, crop, crop) float32 (upsampled, blurred patch scores).
    ``failures``: (path, reason) of images that could not be read (not in m).
    With products (a model that kept them): ``products`` (m,) int64, the product
    of each image's nearest training image; ``product_distances`` (m,) float64,
    the distance to it; ``unknown`` (m,) bool, images that belong to none of the
    model's products (their nearest product is still named).
    With ``thresholds`` (a calibrated model; ``product_thresholds``: the products
    calibrated on their own, the others use ``thresholds``): ``normalised_scores``
    (m,) float64 in [0, 1), x / (1 + x) of x = raw / the image's threshold (0.5 =
    threshold), ``decisions`` (m,) bool (True = defect), ``verdicts`` ("ok",
    "defect" or "unknown product") and ``defect_masks(min_area)`` (m, crop, crop)
    bool, empty for images decided ok.
    """

    paths: list[Path]
    image_scores: np.ndarray
    patch_scores: np.ndarray
    anomaly_maps: np.ndarray
    thresholds: Thresholds | None = None
    failures: list[tuple[Path, str]] = field(default_factory=list)
    products: np.ndarray | None = None
    product_distances: np.ndarray | None = None
    unknown: np.ndarray | None = None
    product_thresholds: dict[int, Thresholds] = field(default_factory=dict)

    def _require_thresholds(self) -> Thresholds:
        if self.thresholds is None:
            raise RuntimeError("the model has no thresholds: calibrate it (fit with a calibration share, "
                               "or calibrate() with normal images)")
        return self.thresholds

    def thresholds_of(self, index: int) -> Thresholds | None:
        """The thresholds image ``index`` is decided by: its product's own, else the global ones (or None)."""
        return self._thresholds_and_owner(index)[0]

    def _thresholds_and_owner(self, index: int) -> tuple[Thresholds | None, str | None]:
        product = None if self.products is None else int(self.products[index])
        return thresholds_of_product(product, self.thresholds, self.product_thresholds)

    def _per_image(self, which: str) -> np.ndarray:
        self._require_thresholds()
        return np.array([getattr(self.thresholds_of(i), which) for i in range(len(self.paths))], dtype=np.float64)

    @property
    def image_thresholds(self) -> np.ndarray:
        """(m,) float64 raw image threshold of each image."""
        return self._per_image("image")

    @property
    def pixel_thresholds(self) -> np.ndarray:
        """(m,) float64 raw pixel threshold of each image."""
        return self._per_image("pixel")

    @property
    def normalised_scores(self) -> np.ndarray:
        return normalise(self.image_scores, self.image_thresholds)

    @property
    def decisions(self) -> np.ndarray:
        return self.image_scores >= self.image_thresholds

    @property
    def verdicts(self) -> list[str]:
        """Per image: "unknown product" (whatever the score), else "defect" or "ok"."""
        self._require_thresholds()
        return [self._verdict(i, self.thresholds_of(i)) for i in range(len(self.paths))]

    def _verdict(self, index: int, thresholds: Thresholds) -> str:
        if self.unknown is not None and self.unknown[index]:
            return UNKNOWN
        return "defect" if self.image_scores[index] >= thresholds.image else "ok"

    def record(self, index: int) -> dict:
        """JSON-ready fields of image ``index``: raw_score; with products, product (the nearest) and
        unknown_product; with thresholds, score (normalised), decision (its verdict), threshold (raw image
        threshold) and threshold_of ("product" or "global")."""
        record = {"raw_score": float(self.image_scores[index])}
        if self.products is not None:
            record.update(product=int(self.products[index]), unknown_product=bool(self.unknown[index]))
        thresholds, owner = self._thresholds_and_owner(index)
        if thresholds is not None:
            record.update(score=float(normalise(self.image_scores[index], thresholds.image)),
                          decision=self._verdict(index, thresholds),
                          threshold=float(thresholds.image), threshold_of=owner)
        return record

    def select(self, index: int) -> Predictions:
        """The predictions of image ``index`` alone (failures left out)."""
        def one(values):
            return None if values is None else values[index : index + 1]
        return Predictions(self.paths[index : index + 1], one(self.image_scores), one(self.patch_scores),
                           one(self.anomaly_maps), self.thresholds, [], one(self.products),
                           one(self.product_distances), one(self.unknown), self.product_thresholds)

    def defect_masks(self, min_area: int = 16) -> np.ndarray:
        """Pixels above the image's pixel threshold, blobs under ``min_area`` removed; empty for images decided ok."""
        masks = defect_masks(self.anomaly_maps, self.pixel_thresholds, min_area)
        return masks & self.decisions[:, None, None]
