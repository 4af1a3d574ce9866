"""Writing results: per-image prediction files, per-class metric tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import load_image
from .detector import Predictions
from .evaluation import Evaluation
from .io import draw_contour, markdown_table, overlay, write_csv, write_json, write_png


def _safe_stem(path: Path, used: set[str]) -> str:
    stem = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    candidate, k = stem, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}_{k}"
    used.add(candidate)
    return candidate


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


def write_predictions(predictions: Predictions, out: Path, resize: int, crop: int, min_area: int = 16) -> list[dict]:
    """scores.csv, scores.json, overlays/<name>.png and, for a calibrated model, masks/<name>.png.

    Records per image: raw score, and with thresholds the normalised score
    (0.5 = threshold) and the decision ("ok" / "defect"). Without thresholds
    heatmaps share one colour scale over the run (lowest to highest map value).
    """
    out.mkdir(parents=True, exist_ok=True)
    calibrated = predictions.thresholds is not None
    low = float(predictions.anomaly_maps.min()) if len(predictions.paths) else 0.0
    high = float(predictions.anomaly_maps.max()) if len(predictions.paths) else 1.0
    masks = predictions.defect_masks(min_area) if calibrated else None
    normalised = predictions.normalised_scores if calibrated else None
    records, used = [], set()
    for index, path in enumerate(predictions.paths):
        name = _safe_stem(path, used)
        record = {"image": str(path), "raw_score": float(predictions.image_scores[index])}
        mask = masks[index] if calibrated else None
        if calibrated:
            record.update(score=float(normalised[index]),
                          decision="defect" if predictions.decisions[index] else "ok",
                          defect_pixels=int(mask.sum()), mask=f"masks/{name}.png")
            write_png(out / record["mask"], (mask * 255).astype(np.uint8))
        record["overlay"] = f"overlays/{name}.png"
        write_png(out / record["overlay"],
                  prediction_images(predictions, index, load_image(path, resize, crop), mask, low, high))
        records.append(record)
    columns = ["image", "score", "decision", "raw_score", "defect_pixels", "overlay", "mask"] if calibrated else [
        "image", "raw_score", "overlay"]
    write_csv(out / "scores.csv", columns, [[r[c] for c in columns] for r in records])
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
