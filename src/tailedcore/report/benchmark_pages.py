"""Benchmark pages: the results of one set and the summary over seeds as Markdown, CSV and HTML.

Everything here renders the ``results.json`` document of ``bench.benchmark``
(and the per-class ClassResults of a run, for curves and example overlays);
nothing here fits or evaluates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._io import atomic_write_text, markdown_table, write_csv, write_json
from ..evaluation import ClassResult
from ..metrics import METRIC_NAMES
from .html import figure, image_grid, page, pyplot, table
from .render import example_picture

GROUPS = ("all", "head", "tail")


def result_rows(results: dict) -> tuple[list[str], list[list]]:
    header = ["method", "class", "role", *METRIC_NAMES]
    roles = {name: item["role"] for name, item in results["dataset"]["classes"].items()}
    rows = []
    for method, block in results["methods"].items():
        for name, values in block["classes"].items():
            rows.append([method, name, roles.get(name, ""), *(values[m] for m in METRIC_NAMES)])
        for group in GROUPS:
            rows.append([method, f"mean ({group})", "", *(block["mean"][group][m] for m in METRIC_NAMES)])
    return header, rows


def _diagnostic_rows(results: dict) -> list[list]:
    rows = []
    for method, block in results["methods"].items():
        d = block["diagnostics"]
        rows.append([method, d["memory_size"], round(d["fit_seconds"]), d.get("predicted_tail_images", ""),
                     d.get("tail_recall"), d.get("tail_precision"),
                     f"{d['injected_in_tail']}/{d['injected_total']}" if "injected_in_tail" in d else "",
                     d.get("lof_dropped_share_injected"), d.get("lof_dropped_share_clean")])
    return rows


DIAGNOSTIC_HEADER = ["method", "memory features", "fit s", "tail images found", "tail recall", "tail precision",
                     "injected in tail", "LOF dropped (injected)", "LOF dropped (clean)"]


def results_markdown(results: dict) -> str:
    info = results["dataset"]
    header, rows = result_rows(results)
    text = [f"Profile: {info.get('profile')}, seed {info.get('seed')}, noise {info.get('noise')}, "
            f"protocol: {info.get('protocol')}; head: {', '.join(info['head'])}; tail: {', '.join(info['tail'])}",
            "", markdown_table(header, rows), "Diagnostics", "",
            markdown_table(DIAGNOSTIC_HEADER, _diagnostic_rows(results))]
    return "\n".join(text)


def _plots(results: dict, extras: dict[str, dict[str, ClassResult]]) -> str:
    plt = pyplot()
    parts = []
    for method, block in results["methods"].items():
        per_image = block["diagnostics"].get("per_image")
        if not per_image:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        names = sorted({p["class"] for p in per_image})
        for name in names:
            points = [(p["true_size"], p["estimated_size"]) for p in per_image if p["class"] == name]
            true, est = np.array(points).T
            jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(true)) * np.maximum(true, 1) * 0.1
            ax.scatter(true + jitter, est, s=10, alpha=0.6, label=name)
        top = max(max(p["true_size"] for p in per_image), max(p["estimated_size"] for p in per_image))
        ax.plot([1, top], [1, top], color="gray", lw=1, ls="--")
        ax.axhline(block["diagnostics"]["max_k"], color="red", lw=1, label=f"max K = {block['diagnostics']['max_k']}")
        ax.set(xscale="log", yscale="log", xlabel="true class size", ylabel="estimated class size",
               title=f"{method}: TailSampler estimate per training image")
        ax.legend(fontsize=7)
        parts.append(figure(fig, "class size estimate vs truth"))
    classes = sorted({c for class_results in extras.values() for c in class_results})
    if classes:
        fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 3.2), squeeze=False)
        for ax, name in zip(axes[0], classes):
            for method, class_results in extras.items():
                if class_results[name].roc is not None:
                    ax.plot(*class_results[name].roc, label=method)
            ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
            ax.set(title=name, xlabel="FPR", ylabel="TPR")
            ax.legend(fontsize=7)
        parts.append("<h2>Image-level ROC per class</h2>" + figure(fig, "ROC curves"))
    return "".join(parts)


def results_html(results: dict, extras: dict[str, dict[str, ClassResult]]) -> str:
    """The report page of one set; ``extras``: method -> class -> ClassResult (curves, example overlays)."""
    info = results["dataset"]
    header, rows = result_rows(results)
    body = [f"<p>Profile <b>{info.get('profile')}</b>, seed {info.get('seed')}, noise {info.get('noise')}, "
            f"protocol <b>{info.get('protocol')}</b>. Head classes: {', '.join(info['head'])}; "
            f"tail classes: {', '.join(info['tail']) or 'none'}. Metrics in %; n/a = not defined for the class "
            "(no pixel masks).</p>",
            table(header, rows), "<h2>Diagnostics</h2>", table(DIAGNOSTIC_HEADER, _diagnostic_rows(results)),
            _plots(results, extras)]
    for method, class_results in extras.items():
        body.append(f"<h2>{method}: highest- and lowest-scored test images per class</h2>")
        body.append(image_grid([(example_picture(example), example.caption)
                                for result in class_results.values() for example in result.examples]))
    return page("tailedcore benchmark", "".join(body))


def write_results(results: dict, out: Path, extras: dict[str, dict[str, ClassResult]] | None = None) -> None:
    """results.json, .csv, .md and, with the runs' ClassResults, report.html in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    header, rows = result_rows(results)
    write_csv(out / "results.csv", header, [[("" if v is None else v) for v in row] for row in rows])
    atomic_write_text(out / "results.md", results_markdown(results))
    if extras is not None:
        atomic_write_text(out / "report.html", results_html(results, extras))


def seed_stat(stat: dict, seeds: int) -> str:
    """"mean ± std" in %, or the value and how many seeds had it when fewer than all did."""
    if stat["mean"] is None:
        return "n/a"
    if stat["n"] < seeds:
        return f"{100 * stat['mean']:.1f}" + (f" ± {100 * stat['std']:.1f}" if stat["n"] > 1 else "") + \
            f" ({stat['n']} of {seeds} seeds)"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def summary_markdown(summary: dict, profile: str) -> str:
    header = ["method", *(f"{g} {m}" for g in GROUPS for m in ("image_auroc", "pixel_auroc"))]
    rows = []
    for method, entry in summary["methods"].items():
        row = [method]
        for group in GROUPS:
            for metric in ("image_auroc", "pixel_auroc"):
                row.append(seed_stat(entry["mean"][group][metric], len(summary["seeds"])))
        rows.append(row)
    return f"Profile {profile}, seeds {summary['seeds']} (mean ± std over seeds, %)\n\n" + markdown_table(header, rows)
