"""Products: the groups of training images a model found, kept with the model.

A product is one cluster of the linkage tail estimator (tail.LinkageTailSampler:
the policy's own when it uses one, the default otherwise): its members, its
size, its role (tail when its size is at most the estimator's ``max_k``), a few
thumbnails of its members, and which memory rows came from it.

A new image is assigned to the product of its nearest member by the cosine
distance of mean patch features (what every prediction computes anyway, exported
graphs included). It is an unknown product when that distance is more than a
factor (the detector's ``unknown_factor``) times the product's spread: the largest distance from one of
its members to its nearest other member, and never less than the median spread
of the products (the spread of a one-image product). The rule has no absolute
distance: it scales with how varied the products of each model are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data import open_rgb, resize_and_crop
from .tail import LinkageTailSampler, TailInputs

THUMBNAIL = 64  # px, square
EXAMPLES = 4  # thumbnails kept per product
UNKNOWN_FACTOR = 2.5  # times a product's spread (benchmarks/unknown_product.py, chosen leave-one-class-out)
_ASSIGN = LinkageTailSampler(features="patches")  # the distance of assignment: mean patch features
_BLOCK_ROWS = 2048


def _mean_patch_distances(rows: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(m, D) and (n, D) mean patch features -> (m, n) float64 cosine distances (``_ASSIGN`` reads no
    embeddings, so the mean patch features stand in for them)."""
    return _ASSIGN.distances_between(TailInputs(rows, rows), TailInputs(members, members))


@dataclass
class Products:
    """The products found among n training images.

    labels: (n,) int64 product of each image, 0 = the largest product;
    mean_patches: (n, D) float32 mean patch features of the images (to assign new
    images); tail: (p,) bool; thumbnails: (p, EXAMPLES,
    THUMBNAIL, THUMBNAIL, 3) uint8 of the first members (black where a product
    has fewer); paths: the n image files as given at the fit; memory_products:
    (k,) int64 product of each memory row (None until the memory is built);
    estimator: the one that found them.
    """

    labels: np.ndarray
    mean_patches: np.ndarray
    tail: np.ndarray
    thumbnails: np.ndarray
    paths: list[str]
    memory_products: np.ndarray | None = None
    estimator: LinkageTailSampler = LinkageTailSampler()

    def __post_init__(self):
        self._spreads: np.ndarray | None = None

    @property
    def sizes(self) -> np.ndarray:
        """(p,) int64 images per product."""
        return np.bincount(self.labels, minlength=len(self.tail))

    def __len__(self) -> int:
        return len(self.tail)

    def member_distances(self, mean_patches: np.ndarray) -> np.ndarray:
        """(m, D) mean patch features of new images -> (m, p) float64 cosine distance of each to the nearest
        member of each product."""
        order = np.argsort(self.labels, kind="stable")
        starts = np.searchsorted(self.labels[order], np.arange(len(self)))
        members = self.mean_patches[order]
        blocks = [np.empty((0, len(self)))]
        for lo in range(0, len(mean_patches), _BLOCK_ROWS):
            block = np.asarray(mean_patches[lo : lo + _BLOCK_ROWS])
            cross = _mean_patch_distances(block, members)
            blocks.append(np.minimum.reduceat(cross, starts, axis=1))
        return np.concatenate(blocks)

    def assign(self, mean_patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m, D) mean patch features of new images -> (m,) int64 product of the nearest member, (m,) float64
        cosine distance to it."""
        return self.nearest(self.member_distances(mean_patches))

    @staticmethod
    def nearest(member_distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m, p) ``member_distances`` -> (m,) int64 nearest product of each image, (m,) float64 distance to it."""
        nearest = member_distances.argmin(axis=1).astype(np.int64)
        return nearest, member_distances[np.arange(len(nearest)), nearest]

    def spreads(self) -> np.ndarray:
        """(p,) float64: per product the largest distance from a member to its nearest other member (mean patch
        features, as ``assign``); NaN for a one-image product."""
        spreads = np.full(len(self), np.nan)
        for product in np.flatnonzero(self.sizes > 1):
            members = self.mean_patches[self.labels == product]
            nearest = []
            for lo in range(0, len(members), _BLOCK_ROWS):
                block = members[lo : lo + _BLOCK_ROWS]
                cross = _mean_patch_distances(block, members)
                cross[np.arange(len(block)), lo + np.arange(len(block))] = np.inf
                nearest.append(cross.min(axis=1))
            spreads[product] = np.concatenate(nearest).max()
        return spreads

    def unknown_limits(self, factor: float | None) -> np.ndarray:
        """(p,) float64: the distance above which an image assigned to a product is an unknown product,
        ``factor`` x max(the product's spread, the median spread); inf everywhere when ``factor`` is None or no
        product has two members (nothing to scale by)."""
        if self._spreads is None:
            self._spreads = self.spreads()
        known = self._spreads[np.isfinite(self._spreads)]
        if factor is None or not len(known):
            return np.full(len(self), np.inf)
        return factor * np.fmax(self._spreads, np.median(known))

    def is_unknown(self, products: np.ndarray, distances: np.ndarray, factor: float | None) -> np.ndarray:
        """(m,) bool: the images (``assign``'s products and distances) farther from their product than its
        limit (``unknown_limits(factor)``)."""
        return np.asarray(distances) > self.unknown_limits(factor)[np.asarray(products, dtype=np.int64)]

    def tail_paths(self) -> list[str]:
        """The files of the tail products' images."""
        return [self.paths[i] for i in np.flatnonzero(self.tail[self.labels])]

    def rows(self) -> list[list]:
        """[id, images, role, memory rows] per product."""
        memory = (np.bincount(self.memory_products, minlength=len(self)) if self.memory_products is not None
                  else [None] * len(self))
        return [[product, int(size), "tail" if tail else "head", None if rows is None else int(rows)]
                for product, (size, tail, rows) in enumerate(zip(self.sizes, self.tail, memory))]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a model file keeps (see ``from_model``)."""
        arrays = {"product_labels": self.labels.astype(np.int32), "product_mean_patches": self.mean_patches,
                  "product_thumbnails": self.thumbnails}
        if self.memory_products is not None:
            arrays["memory_products"] = self.memory_products.astype(np.int32)
        return arrays

    def config(self) -> dict:
        return {"tail": [bool(t) for t in self.tail], "paths": self.paths, "estimator": self.estimator.to_config()}

    @classmethod
    def from_model(cls, arrays: dict[str, np.ndarray], config: dict) -> Products:
        """The products of a model file's ``arrays`` and its ``products`` config entry."""
        estimator = LinkageTailSampler.from_config(config["estimator"])
        if not isinstance(estimator, LinkageTailSampler):
            raise ValueError(f"products: found by a {type(estimator).__name__}, not a linkage estimator")
        memory = arrays.get("memory_products")
        return cls(arrays["product_labels"].astype(np.int64), arrays["product_mean_patches"],
                   np.asarray(config["tail"], dtype=bool), arrays["product_thumbnails"], list(config["paths"]),
                   None if memory is None else memory.astype(np.int64), estimator)


def thumbnail(path: Path) -> np.ndarray:
    """(THUMBNAIL, THUMBNAIL, 3) uint8: the image's centre square, shrunk."""
    return np.asarray(resize_and_crop(open_rgb(path), THUMBNAIL, THUMBNAIL, Image.BILINEAR))


def find_products(inputs: TailInputs, paths: list[Path], estimator: LinkageTailSampler) -> Products:
    """The products of n images: ``inputs`` of the images, their ``paths`` (for thumbnails)."""
    clusters = estimator.clusters(inputs)
    estimate = estimator.estimate_from_clusters(clusters)
    _, first, cluster_of, counts = np.unique(clusters, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))  # largest first; ties by first member
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    labels = rank[cluster_of].astype(np.int64)
    tail = counts[order] <= estimate.max_k
    thumbnails = np.zeros((len(order), EXAMPLES, THUMBNAIL, THUMBNAIL, 3), dtype=np.uint8)
    for product in range(len(order)):
        for slot, member in enumerate(np.flatnonzero(labels == product)[:EXAMPLES]):
            thumbnails[product, slot] = thumbnail(paths[member])
    return Products(labels, np.asarray(inputs.mean_patches, dtype=np.float32), tail, thumbnails,
                    [str(p) for p in paths], estimator=estimator)
