"""Writing results: per-image prediction files, per-class metric tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import load_image
from .detector import Predictions
from .evaluation import Evaluation
from .io import markdown_table, overlay, write_csv, write_json, write_png


def _safe_stem(path: Path, used: set[str]) -> str:
    stem = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    candidate, k = stem, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}_{k}"
    used.add(candidate)
    return candidate


def write_predictions(predictions: Predictions, out: Path, resize: int, crop: int) -> list[dict]:
    """scores.csv, scores.json and overlays/<name>.png (heatmap over the cropped image).

    Heatmaps share one colour scale over the run: from the lowest to the
    highest anomaly-map value. Returns the per-image records.
    """
    out.mkdir(parents=True, exist_ok=True)
    low = float(predictions.anomaly_maps.min()) if len(predictions.paths) else 0.0
    high = float(predictions.anomaly_maps.max()) if len(predictions.paths) else 1.0
    records, used = [], set()
    for path, score, amap in zip(predictions.paths, predictions.image_scores, predictions.anomaly_maps):
        name = _safe_stem(path, used)
        overlay_path = out / "overlays" / f"{name}.png"
        write_png(overlay_path, overlay(load_image(path, resize, crop), amap, low, high))
        records.append({"image": str(path), "score": float(score), "overlay": str(overlay_path.relative_to(out))})
    write_csv(out / "scores.csv", ["image", "score", "overlay"], [[r["image"], r["score"], r["overlay"]] for r in records])
    write_json(out / "scores.json", records)
    return records


def write_evaluation(evaluation: Evaluation, out: Path) -> str:
    """metrics.json, metrics.csv and metrics.md; returns the Markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    header, rows = evaluation.table()
    write_json(out / "metrics.json", evaluation.metrics_json())
    write_csv(out / "metrics.csv", header, [[("" if v is None else v) for v in row] for row in rows])
    text = f"Method: {evaluation.method} (metrics in %, n/a = not defined for the class)\n\n" + markdown_table(header, rows)
    (out / "metrics.md").write_text(text, encoding="utf-8")
    return text


def write_heatmaps(evaluation_maps: dict[str, tuple[list[Path], np.ndarray]], out: Path, resize: int, crop: int,
                   per_class: int = 4) -> None:
    """Overlays of the ``per_class`` highest-scoring test images of each class."""
    for name, (paths, maps) in evaluation_maps.items():
        if not len(paths):
            continue
        peaks = maps.reshape(len(maps), -1).max(axis=1)
        low, high = float(maps.min()), float(maps.max())
        for index in np.argsort(-peaks)[:per_class]:
            path = paths[index]
            write_png(out / f"{name}_{path.parent.name}_{path.stem}.png",
                      overlay(load_image(path, resize, crop), maps[index], low, high))
