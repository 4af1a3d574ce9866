"""Markdown tables for docs/results.md from the benchmark runs (runs/<profile>/seed-N/results.json).

TailedCore with one tail coreset per image (runs/<profile>-per-image) is added as its own row and
compared, seed by seed, with the paper's joint tail coreset where both ran.

    python scripts/results_tables.py runs > /tmp/tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

METHODS = ("patchcore", "softpatch", "tailedcore")
PROFILES = ("step-k1", "step-k4", "pareto")
VARIANT = "tailedcore per-image"  # TailedCore, tail_coreset="per-image"


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
    """{profile: {seed: results}}; a per-image TailedCore run joins its seed as method VARIANT."""
    runs = {}
    for profile in PROFILES:
        for path in sorted((root / profile).glob("seed-*/results.json")):
            runs.setdefault(profile, {})[int(path.parent.name.split("-")[1])] = json.loads(path.read_text())
        for path in sorted((root / f"{profile}-per-image").glob("seed-*/results.json")):
            seed = int(path.parent.name.split("-")[1])
            if seed in runs.get(profile, {}):
                runs[profile][seed]["methods"][VARIANT] = json.loads(path.read_text())["methods"]["tailedcore"]
    return runs


def stage_seconds(block: dict, stage: str) -> float:
    return sum(s["seconds"] for s in block["diagnostics"].get("stages", []) if s["stage"] == stage)


def variant_rows(seeds: dict) -> list[list]:
    """Seed by seed: joint vs per-image tail coreset, where both ran."""
    rows = []
    for seed, result in sorted(seeds.items()):
        methods = result["methods"]
        if VARIANT not in methods or "skipped" in methods["tailedcore"]:
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


def main() -> None:
    runs = load(Path(sys.argv[1]))
    out = []
    for profile, seeds in runs.items():
        out.append(f"### {profile} (seeds {', '.join(map(str, sorted(seeds)))})\n")
        methods = [*METHODS, *([VARIANT] if any(VARIANT in r["methods"] for r in seeds.values()) else [])]
        rows = []
        for method in methods:
            blocks = [r["methods"][method] for r in seeds.values() if method in r["methods"]]
            row = [method]
            for metric in ("image_auroc", "pixel_auroc"):
                for group in ("all", "head", "tail"):
                    row.append(stat([b["mean"][group][metric] for b in blocks]))
            row.append(stat([b["mean"]["all"]["aupro"] for b in blocks]))
            skipped = sum("skipped" in b for b in blocks)
            row.append(f"{skipped} of {len(blocks)}" if skipped else "")
            rows.append(row)
        out.append(table(["method", "I-AUROC all", "I-AUROC head", "I-AUROC tail", "P-AUROC all", "P-AUROC head",
                          "P-AUROC tail", "AUPRO all", "not run"], rows))
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
        rows = []
        for seed, result in sorted(seeds.items()):
            info = result["dataset"]
            sizes = ", ".join(f"{n} {c['kept']}+{c['injected']}" for n, c in info["classes"].items())
            d = result["methods"]["tailedcore"]["diagnostics"]
            lof = result["methods"]["softpatch"]["diagnostics"]
            rows.append([seed, ", ".join(info["tail"]), sizes, d.get("max_k"),
                         f"{d.get('predicted_tail_images')} / {d.get('true_tail_images')}",
                         f"{100 * d['tail_recall']:.0f}" if d.get("tail_recall") is not None else "n/a",
                         f"{100 * d['tail_precision']:.0f}" if d.get("tail_precision") is not None else "n/a",
                         f"{d.get('injected_in_tail')}/{d.get('injected_total')}",
                         f"{100 * lof['lof_dropped_share_injected']:.0f} / {100 * lof['lof_dropped_share_clean']:.0f}"
                         if lof.get("lof_dropped_share_injected") is not None else "n/a",
                         "not run: " + result["methods"]["tailedcore"]["skipped"]
                         if "skipped" in result["methods"]["tailedcore"] else
                         f"{result['methods']['tailedcore']['diagnostics']['memory_size']:,}"])
        out.append("TailSampler and LOF diagnostics (TailedCore; LOF shares from SoftPatch's identical LOF step):\n")
        out.append(table(["seed", "tail classes", "kept+injected per class", "max K", "tail found / true",
                          "tail recall %", "tail precision %", "injected in tail", "LOF dropped % injected / clean",
                          "TailedCore memory"], rows))
        if rows := variant_rows(seeds):
            out.append("TailedCore, joint (paper) vs per-image tail coreset, all-class means; coreset stage seconds "
                       "cover the tail and head coresets:\n")
            out.append(table(["seed", "tail images", "I-AUROC joint / per-image", "P-AUROC joint / per-image",
                              "AUPRO joint / per-image", "memory joint / per-image", "coreset s joint / per-image"],
                             rows))
    print("\n".join(out))


if __name__ == "__main__":
    main()
