"""The tables of docs/features.md from the feature study's JSON files (benchmarks/features_study.py).

    python scripts/features_table.py docs/features_study.json docs/features_study_stages.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def tables(study: dict) -> str:
    rows = study["rows"]
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    classes = study.get("classes") or sorted({row["class"] for row in rows})
    by_key = {(row["setting"], row["class"]): row for row in rows}
    reference = settings[0]
    lines = [f"Image AUROC (%) per class; the mean is over the classes a setting has finished, and the last "
             f"column compares it with {reference} on those same classes (points).", "",
             "| setting | " + " | ".join(classes) + f" | mean | classes | vs {reference} |",
             "|" + "---|" * (len(classes) + 4)]
    for setting in settings:
        values = [by_key.get((setting, name), {}).get("image_auroc") for name in classes]
        done = [(name, v) for name, v in zip(classes, values) if v is not None]
        mean = sum(v for _, v in done) / len(done) if done else None
        paired = [(v, by_key[(reference, name)]["image_auroc"]) for name, v in done if (reference, name) in by_key]
        delta = f"{100 * sum(a - b for a, b in paired) / len(paired):+.1f}" if paired else "n/a"
        lines.append(f"| {setting} | " + " | ".join(percent(v) for v in values)
                     + f" | {percent(mean)} | {len(done)} of {len(classes)} | {delta} |")
    masked = [name for name in classes if any(row["class"] == name and row["pixel_auroc"] is not None for row in rows)]
    lines += ["", "Pixel AUROC / AUPRO (%) of the classes with masks.", "",
              "| setting | " + " | ".join(masked) + " |", "|" + "---|" * (len(masked) + 1)]
    for setting in settings:
        cells = []
        for name in masked:
            row = by_key.get((setting, name))
            cells.append(f"{percent(row['pixel_auroc'])} / {percent(row['aupro'])}" if row else "n/a")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines += ["", "Pixel AUROC / AUPRO (%) where masks exist; time per image and peak RSS, means over classes.", "",
              "| setting | pixel AUROC | AUPRO | fit s/image | test s/image | peak RSS MiB (largest class) |",
              "|---|---|---|---|---|---|"]
    for setting in settings:
        mine = [row for row in rows if row["setting"] == setting]
        pixel = [row["pixel_auroc"] for row in mine if row["pixel_auroc"] is not None]
        pro = [row["aupro"] for row in mine if row["aupro"] is not None]
        fit = sum(row["fit_seconds_per_image"] for row in mine) / len(mine)
        test = sum(row["test_seconds_per_image"] for row in mine) / len(mine)
        lines.append(f"| {setting} | {percent(sum(pixel) / len(pixel) if pixel else None)} | "
                     f"{percent(sum(pro) / len(pro) if pro else None)} | {fit:.2f} | {test:.3f} | "
                     f"{max(row['peak_rss_mib'] for row in mine):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", type=Path, nargs="+", help="JSON files of one or more study runs")
    studies = [json.loads(path.read_text()) for path in parser.parse_args().studies]
    merged = {"rows": [row for study in studies for row in study["rows"]],
              "classes": sorted({name for study in studies for name in study.get("classes", [])})}
    print(tables(merged), end="")


if __name__ == "__main__":
    main()
