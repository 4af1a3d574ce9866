"""From raw distances to decisions: calibrated thresholds and normalised scores.

With normal images only (the usual case) a threshold is the score that a
chosen share of normal images exceeds (the false-alarm rate): for images
their image scores, for pixels their anomaly-map values. With a labeled
validation set the F1-max threshold is offered too. Scores are normalised
by x / (1 + x) of x = raw / threshold: the threshold maps to 0.5 (as anomalib
users read them), the map is strictly increasing and stays below 1, so the
ranking of raw scores is kept however far above the threshold they are; raw
scores stay available.

Thresholds found on few images (fewer than ``MIN_IMAGES``, or fewer than
1 / false-alarm rate, so that not even one normal image is expected above
the threshold) are rough guesses: calibrating warns, and ``Thresholds``
keeps the image count so that a loaded model can say so too.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass

import numpy as np
from skimage.morphology import remove_small_objects
from sklearn.metrics import precision_recall_curve

log = logging.getLogger(__name__)

# Fewest images a threshold should rest on, whatever the false-alarm rate.
MIN_IMAGES = 20
# "product": each product with MIN_IMAGES calibration images has its own thresholds; "global": one for all.
CALIBRATION_SCOPES = ("product", "global")
# What the fit gives a product of fewer held-out images: "global", the global thresholds; "leave-one-out", its
# own, from its held-out images and up to MIN_IMAGES of its training images, each scored against the memory
# without the rows made of it (scoring.LeftOutScorer); "leave-one-out-median": the same, but a product of fewer
# than MIN_IMAGES such images takes its median times the shape shared by all products (calibrate_shared_shape).
SMALL_PRODUCT_RULES = ("global", "leave-one-out", "leave-one-out-median")


@dataclass
class Thresholds:
    """Image and pixel thresholds (raw score units) with the ranges of the scores they were set on (kept for
    reports; ``normalise`` uses the thresholds alone).

    ``source`` says how they were found (e.g. "false-alarm rate 0.01 on 42 held-out training images");
    ``images``: how many images they rest on; ``false_alarm_rate``: the rate (None for F1-max);
    ``search``: the nearest-neighbour search the scores came from, {"search": name, "search_options": {...}}
    (None in model files written before it was kept).
    """

    image: float
    pixel: float
    image_range: tuple[float, float]
    pixel_range: tuple[float, float]
    source: str
    images: int | None = None
    false_alarm_rate: float | None = None
    search: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Thresholds:
        images, rate = data.get("images"), data.get("false_alarm_rate")
        source = str(data["source"])
        if images is None:  # written before the count was stored: read it from the source text
            count = re.search(r" on (\d+) ", source)
            images = int(count.group(1)) if count else None
            found = re.match(r"false-alarm rate ([0-9.eE+-]+) on ", source)
            rate = float(found.group(1)) if found else None
        return cls(float(data["image"]), float(data["pixel"]), tuple(data["image_range"]),
                   tuple(data["pixel_range"]), source, None if images is None else int(images),
                   None if rate is None else float(rate), data.get("search"))

    @property
    def images_needed(self) -> int:
        """Fewest images these thresholds should rest on: MIN_IMAGES, and 1 / false-alarm rate."""
        if self.false_alarm_rate is None:
            return MIN_IMAGES
        return max(MIN_IMAGES, math.ceil(1.0 / self.false_alarm_rate - 1e-9))

    @property
    def few_images(self) -> bool:
        """True when the thresholds rest on fewer images than ``images_needed`` (rough guesses)."""
        return self.images is not None and self.images < self.images_needed

    def few_images_warning(self) -> str | None:
        """A one-line warning when ``few_images``, else None."""
        if not self.few_images:
            return None
        rate = f" at a false-alarm rate of {self.false_alarm_rate:g}" if self.false_alarm_rate is not None else ""
        return (f"thresholds rest on {self.images} images{rate}: at least {self.images_needed} are needed for "
                "more than a rough guess; calibrate on more images (tailedcore calibrate MODEL --normal DIR)")

    def normalise_pixel(self, raw: np.ndarray) -> np.ndarray:
        return normalise(raw, self.pixel)


def normalise(raw: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """x / (1 + x) with x = raw / threshold (raw scores are >= 0; one threshold, or one per score): 0 -> 0,
    threshold -> 0.5, 3 x threshold -> 0.75, strictly increasing and below 1 (float64, so that no two raw
    scores merge)."""
    x = np.maximum(np.asarray(raw, dtype=np.float64), 0.0) / np.maximum(np.asarray(threshold, np.float64), 1e-12)
    return x / (1.0 + x)


def _range(values: np.ndarray) -> tuple[float, float]:
    return float(np.min(values)), float(np.max(values))


def calibrate_false_alarm(image_scores: np.ndarray, maps: np.ndarray, false_alarm_rate: float = 0.01,
                          what: str = "normal images", warn: bool = True) -> Thresholds:
    """Thresholds from normal images only: the (1 - rate) quantiles of image scores (m,) and map values (m, h, w).

    ``warn``: log a warning when they rest on few images (``Thresholds.few_images``)."""
    image_scores = np.asarray(image_scores, dtype=np.float64)
    if image_scores.size == 0:
        raise ValueError("calibration needs at least one normal image")
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate={false_alarm_rate}: must be in (0, 1)")
    image = float(np.quantile(image_scores, 1.0 - false_alarm_rate))
    pixel = float(np.quantile(maps, 1.0 - false_alarm_rate))
    thresholds = Thresholds(image, pixel, _range(image_scores), _range(maps),
                            f"false-alarm rate {false_alarm_rate:g} on {image_scores.size} {what}",
                            int(image_scores.size), float(false_alarm_rate))
    return _warned(thresholds) if warn else thresholds


def calibrate_per_product(image_scores: np.ndarray, maps: np.ndarray, products: np.ndarray,
                          false_alarm_rate: float = 0.01, what: str = "normal images") -> dict[int, Thresholds]:
    """Thresholds of each product with at least MIN_IMAGES of the normal images: image scores (m,), maps
    (m, h, w) and products (m,) int of the images. Products with fewer are left out (they use the global
    thresholds); ``Thresholds.few_images`` still says which rest on fewer than 1 / rate images."""
    products = np.asarray(products)
    return {int(product): calibrate_false_alarm(np.asarray(image_scores)[products == product],
                                                np.asarray(maps)[products == product], false_alarm_rate,
                                                f"{what} of product {product}", warn=False)
            for product, count in zip(*np.unique(products, return_counts=True)) if count >= MIN_IMAGES}


def shared_shape(values: np.ndarray, products: np.ndarray,
                 false_alarm_rate: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(m, ...) values of m calibration images (image scores (m,), or maps (m, h, w)) and their products (m,)
    int -> the products (p,) sorted, the median of each product's values (p,) float64, and the shape all
    products share: the (1 - rate) quantile of every value over its product's median."""
    values, products = np.asarray(values, np.float64), np.asarray(products)
    labels, of_image = np.unique(products, return_inverse=True)
    medians = np.array([np.median(values[products == p]) for p in labels])
    scale = np.maximum(medians[of_image], 1e-12).reshape(-1, *([1] * (values.ndim - 1)))
    return labels, medians, float(np.quantile(values / scale, 1.0 - false_alarm_rate))


def calibrate_shared_shape(image_scores: np.ndarray, maps: np.ndarray, products: np.ndarray, small: dict[int, str],
                           false_alarm_rate: float) -> dict[int, Thresholds]:
    """Thresholds of the ``small`` products ({product: what its images are}), each from its median alone: its
    median image score (map value) times the ``shared_shape`` of all the image scores (map values). Scores
    (m,), maps (m, h, w) and products (m,) int of all the calibration images, of every product; a few images
    give a median, not a tail quantile."""
    image_scores, maps, products = np.asarray(image_scores, np.float64), np.asarray(maps), np.asarray(products)
    labels, image_medians, image_shape = shared_shape(image_scores, products, false_alarm_rate)
    _, pixel_medians, pixel_shape = shared_shape(maps, products, false_alarm_rate)
    thresholds = {}
    for product, what in small.items():
        mine, at = products == product, int(np.searchsorted(labels, product))
        thresholds[int(product)] = Thresholds(
            float(image_medians[at] * image_shape), float(pixel_medians[at] * pixel_shape),
            _range(image_scores[mine]), _range(maps[mine]),
            f"false-alarm rate {false_alarm_rate:g} on {int(mine.sum())} {what}: their median times the shape of all "
            f"{products.size} calibration images ({image_shape:.3g})", int(mine.sum()), float(false_alarm_rate))
    return thresholds


def thresholds_of_product(product: int | None, thresholds: Thresholds | None,
                          product_thresholds: dict[int, Thresholds]) -> tuple[Thresholds | None, str | None]:
    """The thresholds a product's images are decided by and whose they are: its own ("product"), else the
    global ones ("global"), or (None, None) without thresholds. ``product`` None: no product known."""
    if product is not None and int(product) in product_thresholds:
        return product_thresholds[int(product)], "product"
    return (thresholds, "global") if thresholds is not None else (None, None)


def calibrate_scoped(image_scores: np.ndarray, maps: np.ndarray, products: np.ndarray | None, false_alarm_rate: float,
                     scope: str, what: str) -> tuple[Thresholds, dict[int, Thresholds]]:
    """Global thresholds of all the normal images, and with ``scope`` "product" those of each product with
    enough of them: scores (m,), maps (m, h, w), products (m,) int (-1: none; None: a model without products)."""
    overall = calibrate_false_alarm(image_scores, maps, false_alarm_rate, what)
    if scope != "product" or products is None:
        return overall, {}
    chosen = np.asarray(products) >= 0
    return overall, calibrate_per_product(np.asarray(image_scores)[chosen], np.asarray(maps)[chosen],
                                          np.asarray(products)[chosen], false_alarm_rate, what)


def describe_search(setting: dict) -> str:
    """A search setting ({"search": ..., "search_options": {...}}) as text, e.g. "ivf-batched (nprobe=16 rerank=4)"."""
    options = " ".join(f"{key}={value}" for key, value in sorted(setting.get("search_options", {}).items()))
    return setting["search"] + (f" ({options})" if options else "")


def search_mismatch(thresholds: Thresholds | None, setting: dict) -> str | None:
    """Why ``thresholds`` may not fit scores of the search ``setting``: they were calibrated with another (or None)."""
    calibrated = thresholds.search if thresholds is not None else None
    if calibrated is None or calibrated == setting:
        return None
    return (f"thresholds were calibrated with search {describe_search(calibrated)}, scores now come from "
            f"{describe_search(setting)}: raw scores differ by up to a few percent; calibrate again "
            "with this search for decisions that match")


def _warned(thresholds: Thresholds) -> Thresholds:
    """``thresholds``, after a warning when they rest on few images."""
    warning = thresholds.few_images_warning()
    if warning:
        log.warning("%s", warning)
    return thresholds


def _f1_max_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, cuts = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(cuts[int(np.argmax(f1))])


def calibrate_f1(labels: np.ndarray, image_scores: np.ndarray, masks: np.ndarray | None = None,
                 maps: np.ndarray | None = None) -> Thresholds:
    """F1-max thresholds on a labeled validation set: the pixel threshold F1-max on the masks when given, else
    the 0.99 quantile of the normal images' maps (the source says which)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("F1-max calibration needs normal and anomalous validation images")
    image = _f1_max_threshold(labels, image_scores)
    source = f"F1-max on {labels.size} labeled validation images"
    if masks is not None and maps is not None and np.asarray(masks).any():
        pixel = _f1_max_threshold(np.asarray(masks).ravel(), np.asarray(maps).ravel())
        pixel_range = _range(maps)
    else:
        normal_maps = np.asarray(maps)[labels == 0] if maps is not None else None
        if normal_maps is None or normal_maps.size == 0:
            raise ValueError("F1-max calibration needs pixel masks or normal images for the pixel threshold")
        pixel, pixel_range = float(np.quantile(normal_maps, 0.99)), _range(normal_maps)
        source += " (pixel: the 0.99 quantile of the normal images' maps)"
    return _warned(Thresholds(image, pixel, _range(image_scores), pixel_range, source, int(labels.size)))


def held_out_images(products: np.ndarray, share: float, min_class: int, seed: int) -> np.ndarray:
    """Indices (sorted, int64) of training images set aside to calibrate thresholds.

    products: (n,) int product of each image (products.find_products, the
    model's own estimator). ``share`` (rounded) of the images of every product
    of at least ``min_class`` images, drawn at random; smaller products stay
    whole, and every product keeps at least one image for training.
    """
    products = np.asarray(products)
    chosen = [np.empty(0, dtype=np.int64)]
    if share > 0:
        rng = np.random.default_rng([seed, 1])
        for product in np.unique(products):
            members = np.flatnonzero(products == product)
            count = min(int(round(share * len(members))), len(members) - 1)
            if len(members) >= min_class and count > 0:
                chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def defect_masks(maps: np.ndarray, threshold: float | np.ndarray, min_area: int = 16) -> np.ndarray:
    """(m, h, w) anomaly maps -> bool masks: above threshold (one, or (m,) one per map), blobs under
    ``min_area`` pixels removed."""
    masks = np.asarray(maps) >= np.asarray(threshold, dtype=np.float64).reshape(-1, 1, 1)
    if min_area > 1:
        masks = np.stack([remove_small_objects(m, max_size=min_area - 1) for m in masks]) if len(masks) else masks
    return masks
