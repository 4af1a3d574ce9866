"""The products page: what a model found in its training set, one row and a few thumbnails per product."""

from __future__ import annotations

from ..products import Products
from .html import escape, image_grid, page, table

HEADER = ["product", "images", "role", "memory rows"]


def products_page(products: Products, model: str) -> str:
    """A self-contained HTML page of ``products`` (of the model file ``model``)."""
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
    return page("Products", summary + table(HEADER, products.rows(), percent=False) + "".join(sections))
