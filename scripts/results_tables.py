"""Markdown tables for docs/results.md from the benchmark runs (runs/<profile>*/seed-N/results.json).

The methods of one seed may come from several folders run side by side: runs/<profile> and
runs/<profile>-tailedcore hold methods under their own names; runs/<profile>-paper-head (TailedCore
with the paper's head step), runs/<profile>-paper-tail (with the paper's TailSampler; in the eight-class
grid, with its head step too) and runs/<profile>-two-round (TailedCore with the two-round tail
coreset) join as rows of their own, the last compared seed by seed with the joint tail coreset.

    python scripts/results_tables.py runs > /tmp/tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

METHODS = ("patchcore", "softpatch", "tailedcore")
PROFILES = ("step-k1", "step-k4", "pareto")
# Folder suffix -> the row name of the TailedCore run it holds (None: methods under their own names).
FOLDERS = {"": None, "-tailedcore": None, "-paper-head": "tailedcore (paper head step)",
           "-paper-tail": "tailedcore (paper TailSampler)", "-two-round": "tailedcore two-round"}
VARIANT = FOLDERS["-two-round"]


def stat(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.1f} (n=1)"
    text = f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"
    return text + (f" (n={len(values)})" if len(values) < 3 else "")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def load(root: Path) -> dict:
    """{profile: {seed: results}}, the methods of every folder of a profile merged per seed."""
    runs: dict = {}
    for profile in PROFILES:
        for suffix, name in FOLDERS.items():
            for path in sorted((root / f"{profile}{suffix}").glob("seed-*/results.json")):
                result = json.loads(path.read_text())
                seed = runs.setdefault(profile, {}).setdefault(int(path.parent.name.split("-")[1]),
                                                              {**result, "methods": {}})
                methods = result["methods"] if name is None else {name: result["methods"]["tailedcore"]}
                seed["methods"].update(methods)
    return runs


def stage_seconds(block: dict, stage: str) -> float:
    return sum(s["seconds"] for s in block["diagnostics"].get("stages", []) if s["stage"] == stage)


def variant_rows(seeds: dict) -> list[list]:
    """Seed by seed: joint vs two-round tail coreset, where both ran."""
    rows = []
    for seed, result in sorted(seeds.items()):
        methods = result["methods"]
        if VARIANT not in methods or "tailedcore" not in methods:
            continue
        joint, per_image = methods["tailedcore"], methods[VARIANT]
        row = [seed, methods["tailedcore"]["diagnostics"].get("predicted_tail_images")]
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            a, b = joint["mean"]["all"][metric], per_image["mean"]["all"][metric]
            row.append(f"{100 * a:.1f} / {100 * b:.1f} ({100 * (b - a):+.1f})" if None not in (a, b) else "n/a")
        row.append(f"{joint['diagnostics']['memory_size']:,} / {per_image['diagnostics']['memory_size']:,}")
        row.append(f"{stage_seconds(joint, 'coreset'):.0f} / {stage_seconds(per_image, 'coreset'):.0f}")
        rows.append(row)
    return rows


def points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def class_gaps(methods: dict) -> dict[str, float]:
    """The default TailedCore's image AUROC minus PatchCore's on each class both scored ({} without both)."""
    if "tailedcore" not in methods or "patchcore" not in methods:
        return {}
    ours, theirs = methods["tailedcore"]["classes"], methods["patchcore"]["classes"]
    return {name: ours[name]["image_auroc"] - theirs[name]["image_auroc"] for name in theirs if name in ours}


def set_rows(seeds: dict) -> list[list]:
    """Seed by seed, the targets of the tail issue: all-class and head image AUROC of every method, the
    default TailedCore's lead over the best baseline, and its worst class against PatchCore."""
    rows = []
    for seed, result in sorted(seeds.items()):
        methods = result["methods"]
        row = [seed, ", ".join(result["dataset"]["head"])]
        row += [points(methods[m]["mean"]["all"]["image_auroc"]) if m in methods else "-"
                for m in (*METHODS, FOLDERS["-paper-head"], FOLDERS["-paper-tail"])]
        baselines = [m for m in ("patchcore", "softpatch") if m in methods]
        if "tailedcore" not in methods or not baselines:
            rows.append(row + ["-"] * 3)
            continue
        ours = methods["tailedcore"]
        for group in ("all", "head"):
            best = max(methods[m]["mean"][group]["image_auroc"] for m in baselines)
            row.append(f"{100 * (ours['mean'][group]['image_auroc'] - best):+.1f}")
        if gaps := class_gaps(methods):
            worst = min(gaps, key=gaps.get)
            row.append(f"{worst} {100 * gaps[worst]:+.1f}")
        else:
            row.append("-")
        rows.append(row)
    return rows


def class_gap_rows(seeds: dict, classes: list[str]) -> list[list]:
    """Seed by seed, the default TailedCore's image AUROC minus PatchCore's on each class (points), with the
    class's role in the set (h: head, t: tail)."""
    rows = []
    for seed, result in sorted(seeds.items()):
        if gaps := class_gaps(result["methods"]):
            roles = result["dataset"]["classes"]
            rows.append([seed, *(f"{roles[name]['role'][0]} {100 * gaps[name]:+.1f}" if name in gaps else "-"
                                 for name in classes)])
    return rows


def main() -> None:
    runs = load(Path(sys.argv[1]))
    out = []
    for profile, seeds in runs.items():
        out.append(f"### {profile} (seeds {', '.join(map(str, sorted(seeds)))})\n")
        out.append("Set by set (image AUROC, all classes; '-': not run). Lead: the default TailedCore against the best "
                   "baseline, all classes and head classes; worst class: its largest loss to PatchCore:\n")
        out.append(table(["seed", "head classes", "PatchCore", "SoftPatch", "TailedCore", "TailedCore, paper head step",
                          "TailedCore, paper TailSampler", "lead all", "lead head", "worst class against PatchCore"],
                         set_rows(seeds)))
        found = {m for r in seeds.values() for m in r["methods"]}
        methods = [m for m in [*METHODS, *(n for n in FOLDERS.values() if n)] if m in found]
        rows = []
        for method in methods:
            blocks = [r["methods"][method] for r in seeds.values() if method in r["methods"]]
            row = [method]
            for metric in ("image_auroc", "pixel_auroc"):
                for group in ("all", "head", "tail"):
                    row.append(stat([b["mean"][group][metric] for b in blocks]))
            row.append(stat([b["mean"]["all"]["aupro"] for b in blocks]))
            row.append(", ".join(str(seed) for seed, r in sorted(seeds.items()) if method in r["methods"]))
            rows.append(row)
        out.append(table(["method", "I-AUROC all", "I-AUROC head", "I-AUROC tail", "P-AUROC all", "P-AUROC head",
                          "P-AUROC tail", "AUPRO all", "seeds"], rows))
        classes = sorted({c for r in seeds.values() for c in r["dataset"]["classes"]})
        rows = []
        for method in methods:
            row = [method]
            for name in classes:
                row.append(stat([r["methods"][method]["classes"].get(name, {}).get("image_auroc")
                                 for r in seeds.values() if method in r["methods"]]))
            rows.append(row)
        out.append("Image AUROC per class (mean ± std over seeds; role per seed below):\n")
        out.append(table(["method", *classes], rows))
        if rows := class_gap_rows(seeds, classes):
            out.append("TailedCore (default) against PatchCore, class by class "
                       "(image AUROC points; h: head, t: tail):\n")
            out.append(table(["seed", *classes], rows))
        rows = []
        for seed, result in sorted(seeds.items()):
            info = result["dataset"]
            sizes = ", ".join(f"{n} {c['kept']}+{c['injected']}" for n, c in info["classes"].items())
            for method in methods:
                d = result["methods"].get(method, {}).get("diagnostics", {})
                if "max_k" not in d:
                    continue
                rows.append([seed, method, ", ".join(info["tail"]), sizes, d["max_k"],
                             f"{d['predicted_tail_images']} / {d['true_tail_images']}",
                             f"{100 * d['tail_recall']:.0f}" if d.get("tail_recall") is not None else "n/a",
                             f"{100 * d['tail_precision']:.0f}" if d.get("tail_precision") is not None else "n/a",
                             f"{d['injected_in_tail']}/{d['injected_total']}",
                             f"{100 * d['lof_dropped_share_injected']:.0f} / {100 * d['lof_dropped_share_clean']:.0f}"
                             if d.get("lof_dropped_share_injected") is not None else "n/a",
                             f"{d['memory_size']:,}" if "memory_size" in d else "n/a",
                             f"{stage_seconds(result['methods'][method], 'coreset'):.0f}"])
        out.append("Tail and LOF diagnostics of the TailedCore runs:\n")
        out.append(table(["seed", "method", "tail classes", "kept+injected per class", "max K", "tail found / true",
                          "tail recall %", "tail precision %", "injected in tail", "LOF dropped % injected / clean",
                          "memory", "coreset s"], rows))
        if rows := variant_rows(seeds):
            out.append("TailedCore, joint (paper) vs two-round tail coreset, all-class means; coreset stage seconds "
                       "cover the tail and head coresets:\n")
            out.append(table(["seed", "tail images", "I-AUROC joint / two-round", "P-AUROC joint / two-round",
                              "AUPRO joint / two-round", "memory joint / two-round", "coreset s joint / two-round"],
                             rows))
    print("\n".join(out))


if __name__ == "__main__":
    main()
