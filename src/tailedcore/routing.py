"""Search in each product's own memory: an image's patches scored against the rows of its product.

A model that kept its products (products.py) knows the product of every memory
row. With ``search_scope`` "product" an image is assigned to a product
(``Products.assign``) and its patches are searched along that product's route:
its own rows, and, for a product of fewer than ``min_rows`` memory rows, the rows
of the products nearest to it (nearest members first) until the route holds that
many. Each product has its own index of the detector's search kind; the nearest
rows of the products searched are merged. A route is the product's, fixed when
the scorer is made, not the image's: every image of a product is scored against
the same memory, so its scores stay comparable within the product. An image of an
unknown product is searched in the whole memory. Products of fewer than
EXACT_BELOW_ROWS rows are searched exactly.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import numpy as np

from .products import Products
from .scoring import PatchScorer, build_search, finish_scores

# A product with fewer memory rows is searched exactly: an approximate index over so few rows saves
# nothing, and faiss cannot train IVF lists on them.
EXACT_BELOW_ROWS = 1024
# A product of fewer memory rows borrows its nearest products' rows until its route holds this many (a one-image
# tail product holds tens to hundreds).
ROUTE_MIN_ROWS = 1024
SEARCH_SCOPES = ("global", "product")


class RoutedScorer:
    """Scores patches against the memory rows of their image's product (thread-safe).

    memory: (M, D) float32; weights: (M,) float32 or None; ``products.memory_products``:
    (M,) int64 product of each row; ``global_scorer``: makes a PatchScorer over the
    whole memory (for images of unknown products); indexes are built on first
    use (``build`` builds them all now).
    """

    def __init__(self, memory: np.ndarray, weights: np.ndarray | None, products: Products,
                 global_scorer: Callable[[], PatchScorer], num_neighbors: int = 1, squared: bool = True,
                 search: str = "exact", unknown_factor: float | None = None, min_rows: int = ROUTE_MIN_ROWS,
                 **search_options):
        if products.memory_products is None or len(products.memory_products) != len(memory):
            raise ValueError("search_scope='product' needs the product of every memory row (a model with products)")
        self.memory, self.weights, self.products = memory, weights, products
        self.make_global_scorer, self._global_scorer = global_scorer, None
        self.num_neighbors, self.squared = num_neighbors, squared
        self.search, self.search_options = search, search_options
        self.unknown_factor, self.min_rows = unknown_factor, min_rows
        self.rows = [np.flatnonzero(products.memory_products == p) for p in range(len(products))]
        self.product_routes = self._product_routes()
        self._indexes: dict[int, object] = {}
        self._lock = threading.Lock()

    def _index(self, product: int):
        if product not in self._indexes:
            rows = self.memory[self.rows[product]]
            self._indexes[product] = (build_search(rows, "exact") if len(rows) < EXACT_BELOW_ROWS
                                      else build_search(rows, self.search, **self.search_options))
        return self._indexes[product]

    def _global(self) -> PatchScorer:
        with self._lock:
            if self._global_scorer is None:
                self._global_scorer = self.make_global_scorer()
        return self._global_scorer

    def build(self) -> None:
        """Build every index now, the whole memory's included (they are otherwise built at first use)."""
        for product in range(len(self.products)):
            if len(self.rows[product]):
                self._index(product)
        self._global()

    def _product_routes(self) -> list[tuple[int, ...]]:
        """Per product the products searched for its images: itself, then while the route holds fewer than
        ``min_rows`` rows the next nearest product (the distance from its nearest member to the other
        product's nearest member, mean patch features); products without memory rows are left out."""
        products = self.products
        member_distances = products.member_distances(products.mean_patches)  # (n members, p)
        routes = []
        for product in range(len(products)):
            between = member_distances[products.labels == product].min(axis=0)
            others = [int(p) for p in np.argsort(between, kind="stable") if p != product and len(self.rows[p])]
            route, held = ([product] if len(self.rows[product]) else []), len(self.rows[product])
            for other in others:
                if held >= self.min_rows:
                    break
                route.append(other)
                held += len(self.rows[other])
            routes.append(tuple(route))
        return routes

    def routes(self, mean_patches: np.ndarray) -> list[tuple[int, ...]]:
        """(B, D) mean patch features of images -> per image the products searched (its product's route);
        () for an image of an unknown product (the whole memory)."""
        nearest, own_distances = self.products.assign(mean_patches)
        unknown = self.products.is_unknown(nearest, own_distances, self.unknown_factor)
        return [() if is_unknown else self.product_routes[product] for product, is_unknown in zip(nearest, unknown)]

    def _nearest(self, queries: np.ndarray, product: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> the num_neighbors nearest rows of one product: (Q, k) distances and memory rows."""
        distances, rows = self._index(product).search(queries, min(self.num_neighbors, len(self.rows[product])))
        return distances, self.rows[product][rows]

    def _merged(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k_i) distances and memory rows found in several products -> the (Q, k) nearest of them all."""
        distances = np.concatenate([d for d, _ in parts], axis=1)
        indices = np.concatenate([i for _, i in parts], axis=1)
        order = np.argsort(distances, axis=1, kind="stable")[:, : self.num_neighbors]
        return np.take_along_axis(distances, order, axis=1), np.take_along_axis(indices, order, axis=1)

    def score(self, patches: np.ndarray) -> np.ndarray:
        """(B, P, D) patch features of B images -> (B, P) float32 patch scores.

        Each product is searched once per batch, with the patches of every image whose route holds it."""
        routes = self.routes(patches.mean(axis=1))
        scores = np.empty(patches.shape[:2], dtype=np.float32)
        unknown = [image for image, route in enumerate(routes) if not route]
        if unknown:
            scores[unknown] = self._global().score(patches[unknown])
        found: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}  # image -> product -> (P, k) each
        with self._lock:
            for product in sorted({p for route in routes for p in route}):
                images = [image for image, route in enumerate(routes) if product in route]
                queries = patches[images].reshape(-1, patches.shape[-1])
                distances, rows = self._nearest(queries, product)
                for image, d, i in zip(images, np.split(distances, len(images)), np.split(rows, len(images))):
                    found.setdefault(image, {})[product] = d, i
        for image, by_product in found.items():
            distances, indices = self._merged([by_product[p] for p in routes[image]])
            scores[image] = finish_scores(distances, indices, self.weights, self.squared)
        return scores


def make_scorer(memory: np.ndarray, weights: np.ndarray | None, num_neighbors: int, squared: bool, search: str,
                search_options: dict, routing: tuple[Products, float | None] | None = None,
                engine=None) -> PatchScorer | RoutedScorer:
    """The scorer of a memory (M, D): over the whole memory, or with ``routing`` (products, unknown factor)
    routed by product; ``engine`` shards an exact search of the whole memory (PatchScorer)."""
    whole = functools.partial(PatchScorer, memory, weights, num_neighbors, squared, search, engine, **search_options)
    if routing is None:
        return whole()
    products, unknown_factor = routing
    return RoutedScorer(memory, weights, products, whole, num_neighbors=num_neighbors, squared=squared, search=search,
                        unknown_factor=unknown_factor, **search_options)
