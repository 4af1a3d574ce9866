"""Writing results: per-image prediction files, per-class metric tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._io import atomic_write_text, markdown_table, write_csv, write_json, write_png
from ..data import load_image
from ..evaluation import ClassResult, Evaluation
from ..predictions import Predictions
from .html import figure, image_grid, page, pyplot, table
from .render import example_picture, prediction_images


def output_names(paths: list[Path]) -> list[str]:
    """Each path relative to the folder all of them share, without suffix; repeated names get _2, _3, ..."""
    if not paths:
        return []
    base = Path(os.path.commonpath([path.absolute().parent for path in paths]))
    names, used = [], set()
    for path in paths:
        name = path.absolute().relative_to(base).with_suffix("").as_posix()
        candidate, k = name, 1
        while candidate in used:
            k += 1
            candidate = f"{name}_{k}"
        used.add(candidate)
        names.append(candidate)
    return names


# Columns of scores.csv, calibrated model or not (score, decision, threshold, defect_pixels and mask are empty
# when not; product and unknown_product when the model kept no products; error is empty for scored images, and
# the only filled cell besides image for unreadable ones).
SCORE_COLUMNS = ["image", "score", "decision", "raw_score", "product", "unknown_product", "threshold",
                 "threshold_of", "defect_pixels", "overlay", "mask", "error"]


def write_predictions(predictions: Predictions, out: Path, resize: int, crop: int, min_area: int = 16) -> list[dict]:
    """scores.csv, scores.json, overlays/<name>.png and, for a calibrated model, masks/<name>.png.

    ``<name>`` is the image's path relative to the folder all images share, without suffix.

    Records per image: raw score; with products, the image's product and
    whether it is an unknown product; with thresholds, the normalised score
    (0.5 = the image's threshold), the decision ("ok", "defect" or "unknown
    product") and the threshold (raw; "product" or "global"); an unreadable
    image gets a record with its "error" instead. ``scores.csv`` has the
    columns SCORE_COLUMNS either way, with empty cells where a value does not
    apply. Without thresholds heatmaps share one colour scale over the run
    (lowest to highest map value).
    """
    out.mkdir(parents=True, exist_ok=True)
    calibrated = predictions.thresholds is not None
    low = float(predictions.anomaly_maps.min()) if len(predictions.paths) else 0.0
    high = float(predictions.anomaly_maps.max()) if len(predictions.paths) else 1.0
    masks = predictions.defect_masks(min_area) if calibrated else None
    records = []
    for index, (path, name) in enumerate(zip(predictions.paths, output_names(predictions.paths))):
        record = {"image": str(path), **predictions.record(index)}
        mask = masks[index] if calibrated else None
        if calibrated:
            record.update(defect_pixels=int(mask.sum()), mask=f"masks/{name}.png")
            write_png(out / record["mask"], (mask * 255).astype(np.uint8))
        record["overlay"] = f"overlays/{name}.png"
        write_png(out / record["overlay"],
                  prediction_images(predictions, index, load_image(path, resize, crop), mask, low, high))
        records.append(record)
    for path, reason in predictions.failures:
        records.append({"image": str(path), "error": reason})
    columns = SCORE_COLUMNS  # the same whether or not the model is calibrated: empty cells when not
    write_csv(out / "scores.csv", columns, [[r.get(c, "") for c in columns] for r in records])
    write_json(out / "scores.json", records)
    return records


def write_evaluation(evaluation: Evaluation, out: Path) -> str:
    """metrics.json, metrics.csv, metrics.md and report.html; returns the Markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    header, rows = evaluation.table()
    write_json(out / "metrics.json", evaluation.metrics_json())
    write_csv(out / "metrics.csv", header, [[("" if v is None else v) for v in row] for row in rows])
    text = (f"Method: {evaluation.method} (metrics in %, n/a = not defined for the class)\n\n"
            + markdown_table(header, rows))
    atomic_write_text(out / "metrics.md", text)
    atomic_write_text(out / "report.html", evaluation_html(evaluation))
    return text


def stage_table(rows: list[list]) -> str:
    """Markdown table of a StageTimer's (stage, seconds, peak RSS MiB) rows."""
    return markdown_table(["stage", "seconds", "peak RSS MiB"],
                          [[name, f"{seconds:.1f}", f"{rss:.0f}"] for name, seconds, rss in rows])


def write_examples(evaluation: Evaluation, out: Path) -> None:
    """Each class's example overlays (highest- and lowest-scored test images) as PNG files."""
    for name, result in evaluation.classes.items():
        for index, example in enumerate(result.examples):
            write_png(out / f"{name}_{index}.png", example_picture(example))


def curve_figures(classes: dict[str, ClassResult]) -> str:
    """ROC (image level) and PRO (pixel level) curves of each class, as inline figures."""
    plt = pyplot()
    fig, (roc_axis, pro_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name, result in classes.items():
        if result.roc is not None:
            roc_axis.plot(*result.roc, label=f"{name} ({100 * result.metrics['image_auroc']:.1f})")
        if result.pro is not None:
            pro_axis.plot(*result.pro, label=f"{name} ({100 * result.metrics['aupro']:.1f})")
    roc_axis.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    roc_axis.set(title="image ROC (AUROC %)", xlabel="false-positive rate", ylabel="true-positive rate")
    pro_axis.axvline(0.3, color="gray", lw=0.8, ls="--")
    pro_axis.set(title="pixel PRO (AUPRO % up to FPR 0.3)", xlabel="false-positive rate (pixels)",
                 ylabel="per-region overlap", xlim=(0, 1))
    for axis in (roc_axis, pro_axis):
        if axis.lines[:-1] or axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    return figure(fig, "ROC and PRO curves")


def histogram_figure(classes: dict[str, ClassResult], threshold: float | None) -> str:
    """Per class with scored test images: scores of normal vs anomalous images, the threshold marked."""
    plt = pyplot()
    scored = {name: result for name, result in classes.items() if len(result.image_scores)}
    if not scored:
        return "<p>No class has a readable test image.</p>"
    fig, axes = plt.subplots(1, len(scored), figsize=(3.4 * len(scored), 3), squeeze=False)
    for axis, (name, result) in zip(axes[0], scored.items()):
        bins = np.linspace(result.image_scores.min(), result.image_scores.max(), 25)
        axis.hist(result.image_scores[result.labels == 0], bins=bins, alpha=0.6, label="normal", color="#1a7f37")
        axis.hist(result.image_scores[result.labels == 1], bins=bins, alpha=0.6, label="anomalous", color="#c62828")
        if threshold is not None:
            axis.axvline(threshold, color="black", lw=1.2, ls="--", label="threshold")
        axis.set(title=name, xlabel="image score (raw)")
        axis.legend(fontsize=7)
    return figure(fig, "score histograms")


def evaluation_html(evaluation: Evaluation) -> str:
    """A self-contained page: table, curves, histograms, example overlays."""
    header, rows = evaluation.table()
    thresholds = evaluation.thresholds
    calibrated = (f"Thresholds: image {thresholds.image:.4g}, pixel {thresholds.pixel:.4g} ({thresholds.source}); "
                  "overlays show the normalised map (0.5 = threshold) and the defect-mask contour in white."
                  if thresholds else "The model has no thresholds: overlays share one colour scale per class.")
    body = [f"<p>Method <b>{evaluation.method}</b>. Metrics in %; n/a = not defined for the class. {calibrated}</p>",
            table(header, rows), "<h2>Curves</h2>", curve_figures(evaluation.classes),
            "<h2>Image scores: normal vs anomalous</h2>",
            histogram_figure(evaluation.classes, thresholds.image if thresholds else None),
            "<h2>Most and least anomalous test images</h2>",
            image_grid([(example_picture(example), example.caption)
                        for result in evaluation.classes.values() for example in result.examples])]
    return page(f"tailedcore evaluation: {evaluation.method}", "".join(body))
