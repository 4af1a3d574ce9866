"""Self-contained HTML pages: tables, matplotlib figures and images inlined as base64."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from .._io import format_cell, png_bytes

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1, h2, h3 { font-weight: 600; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
th { background: #f2f2f2; }
.note { color: #666; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
.grid figure { margin: 0; font-size: 0.75em; width: 150px; }
.grid img { width: 150px; height: 150px; display: block; }
img.plot { max-width: 100%; }
"""


def escape(text) -> str:
    return html.escape(str(text))


def cell(value, percent: bool = True) -> str:
    return escape(format_cell(value, percent))


def table(header: list[str], rows: list[list], percent: bool = True) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    def td(value) -> str:
        numeric = value is None or isinstance(value, (int, float, np.integer, np.floating))
        return f"<td>{cell(value, percent)}</td>" if numeric else f'<td class="text">{cell(value, percent)}</td>'

    body = "".join("<tr>" + "".join(td(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_data_uri(array: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(array)).decode()


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (reports run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_data_uri(fig) -> str:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def figure(fig, alt: str) -> str:
    return f'<img class="plot" alt="{escape(alt)}" src="{figure_data_uri(fig)}">'


def image_grid(items: list[tuple[np.ndarray, str]]) -> str:
    """items: (RGB uint8 image, caption)."""
    cells = "".join(
        f'<figure><img alt="{escape(caption)}" src="{png_data_uri(image)}"><figcaption>{escape(caption)}'
        "</figcaption></figure>"
        for image, caption in items
    )
    return f'<div class="grid">{cells}</div>'


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>\n")
