"""The products page: what a model found in its training set, one row and a few thumbnails per product."""

from __future__ import annotations

from ..products import Products
from ..thresholds import Thresholds, thresholds_of_product
from .html import escape, image_grid, page, table

HEADER = ["product", "images", "role", "memory rows", "image threshold"]


def product_rows(products: Products, thresholds: Thresholds | None,
                 product_thresholds: dict[int, Thresholds]) -> list[list]:
    """HEADER's rows: Products.rows and each product's image threshold (raw when its own; "global" when it
    uses the global one, "none" for a model without thresholds)."""
    def threshold(product: int) -> str:
        found, owner = thresholds_of_product(product, thresholds, product_thresholds)
        return f"{found.image:.4g}" if owner == "product" else owner or "none"
    return [row + [threshold(row[0])] for row in products.rows()]


def products_page(products: Products, rows: list[list], model: str) -> str:
    """A self-contained HTML page of ``products`` (of the model file ``model``) with their ``rows``."""
    sizes = products.sizes
    sections = [
        f"<h2>Product {product} ({int(sizes[product])} images, {'tail' if products.tail[product] else 'head'})</h2>"
        + image_grid([(products.thumbnails[product, slot], f"member {slot + 1}")
                      for slot in range(min(int(sizes[product]), len(products.thumbnails[product])))])
        for product in range(len(products))
    ]
    summary = (f'<p class="note">{escape(model)}: {len(products)} products, {int(products.tail.sum())} of them tail '
               f"({int(sizes[products.tail].sum())} images); a product is a cluster of the linkage estimator "
               f"(cut at cosine distance {products.estimator.distance:g}).</p>")
    return page("Products", summary + table(HEADER, rows, percent=False) + "".join(sections))
