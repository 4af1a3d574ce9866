"""Do a product's own images say whether the tail step's rotated views will help it?

The tail step keeps each tail image with 47 rotated and flipped views. They are
its large gain where a product is photographed in any orientation (screw,
impeller) and a small cost on textures (concrete, magnetic_tile; tail_views.py).
A product known from two or more images carries evidence of its own: if its
images lie in different orientations, some rotated view of one image is closer
to another image than the image itself or its flipped copy is. For each class,
``--draws`` draws of ``--members`` training images (and the first two of each
draw): ``views.rotation_evidence`` of their mean patch features through the
fit's 128-d projection (what the tail step holds): the median over ordered
pairs of members (a, b) of the cosine distance from b to the nearest view of a
over that to the nearer of a and a's flipped copy (1: no rotation brings the
product's images closer). The classes are labelled by
docs/tail_views.json: the views help (every image drawn gains), cost (every one
loses) or are mixed. A threshold on the evidence is judged leave-one-class-out:
chosen on the other classes (the one that misjudges the fewest of their draws
the views help or cost, in the middle of the widest gap among equals), applied
to the class left out.

    python benchmarks/tail_rotations.py --json docs/tail_rotations.json --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import REAL_AD, print_table

from tailedcore import TailedCore
from tailedcore.data import list_images
from tailedcore.sampling import project, random_projection
from tailedcore.views import augmented_views, rotation_evidence, view_transforms

VIEWS_JSON = Path(__file__).resolve().parents[1] / "docs" / "tail_views.json"


def view_label(gains: list[float]) -> str:
    """'helps' when the views gain on every image drawn (tail_views.py), 'costs' when they lose on every one."""
    return "helps" if min(gains) > 0 else "costs" if max(gains) < 0 else "mixed"


def best_threshold(helps: list[float], costs: list[float]) -> float:
    """The evidence threshold (rotations kept below it) that misjudges the fewest draws: one the views help at
    or above it, one they cost below it. Among equals, the middle of the widest gap between draws."""
    values = np.unique(np.concatenate([helps, costs]))
    gaps = [(values[i + 1] - values[i], (values[i] + values[i + 1]) / 2) for i in range(len(values) - 1)]
    candidates = [(0.0, values[0]), *gaps, (0.0, values[-1] + 1e-9)]

    def errors(threshold: float) -> int:
        return int((np.asarray(helps) >= threshold).sum() + (np.asarray(costs) < threshold).sum())

    return min(candidates, key=lambda gap: (errors(gap[1]), -gap[0]))[1]


def left_out_thresholds(evidence: dict[str, list[float]], labels: dict[str, str]) -> dict[str, float]:
    """Per class, ``best_threshold`` of the draws of the other classes that the views help or cost."""
    chosen = {}
    for left_out in evidence:
        helps = [e for c, values in evidence.items() if c != left_out and labels[c] == "helps" for e in values]
        costs = [e for c, values in evidence.items() if c != left_out and labels[c] == "costs" for e in values]
        chosen[left_out] = best_threshold(helps, costs)
    return chosen


def run_class(root: Path, name: str, members: int, draws: int, seed: int) -> dict[str, list[float]]:
    extractor = TailedCore(progress=False).extractor
    projection = random_projection(extractor.feature_dim, 128, seed=0)  # the fit's projection (seed 0)
    transforms = view_transforms()
    train = list_images(root / name / "train" / "good")
    rng = np.random.default_rng(seed)
    evidence: dict[str, list[float]] = {str(members): [], "2": []}
    for _ in range(draws):
        means = []  # (1 + V, d) per member: the image's and its views' mean projected patch features
        for pick in rng.choice(len(train), members, replace=False):
            image = extractor.standardise(extractor.load([train[pick]]))[0]
            patches = extractor.features(torch.cat([image[None], augmented_views(image, transforms)])).patches
            means.append(project(patches, projection).mean(axis=1))
        means = np.stack(means)
        evidence[str(members)].append(rotation_evidence(means[:, 0], means[:, 1:], transforms))
        evidence["2"].append(rotation_evidence(means[:2, 0], means[:2, 1:], transforms))
    return evidence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=REAL_AD)
    parser.add_argument("--members", type=int, default=4, help="training images per draw (a product of that size)")
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="keep the classes already in --json")
    args = parser.parse_args()
    if args.members < 2:
        parser.error(f"--members {args.members}: a product needs at least two images for evidence")
    if args.threads:
        torch.set_num_threads(args.threads)
    gains = {name: [row["47 views (paper)"] - row["image alone"] for row in rows]
             for name, rows in json.loads(VIEWS_JSON.read_text()).items()}
    labels = {name: view_label(values) for name, values in gains.items()}
    classes = sorted(p.name for p in args.root.iterdir() if (p / "train").is_dir())
    results = json.loads(args.json.read_text()) if args.resume and args.json.is_file() else {}
    for name in classes:
        if name not in results:
            results[name] = run_class(args.root, name, args.members, args.draws, args.seed)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    for size in (str(args.members), "2"):
        evidence = {name: results[name][size] for name in classes}
        thresholds = left_out_thresholds(evidence, labels)
        rows = []
        for name in classes:
            kept = np.mean(np.asarray(evidence[name]) < thresholds[name])
            rows.append([name, labels[name], f"{100 * np.mean(gains[name]):+.1f}",
                         f"{np.median(evidence[name]):.3f} ({min(evidence[name]):.3f}-{max(evidence[name]):.3f})",
                         f"{thresholds[name]:.3f}", f"{kept:.0%}"])
        every = best_threshold(*([e for c in classes if labels[c] == label for e in evidence[c]]
                                 for label in ("helps", "costs")))
        print(f"\nproducts of {size} images, {args.draws} draws per class")
        print_table(["class", "views (tail_views.py)", "views' gain", "evidence: median (range)",
                     "threshold chosen without it", "draws that keep the rotations"], rows)
        print(f"threshold chosen on every class: {every:.3f}")


if __name__ == "__main__":
    main()
