"""What the tail step's views give a product known from one image, class by class.

TailedCore keeps each tail image with 47 rotated and flipped views. For each
class of real-ad, one training image at a time is the whole memory (every patch,
no coreset) of a one-image product; the class's test images (a seeded sample of
good and defective ones) are scored against it (the largest patch distance to its
nearest memory patch, squared L2 of the default features) with four memories:
the image alone, the image and its 47 views (the paper), the image and its
flipped copy, and the image and the views within the linkage estimator's cut of
it (the estimator's own rule for "the same product"). Image AUROC per image and
memory; means per class.

    python benchmarks/tail_views.py --json docs/tail_views.json --threads 1

``--resume`` keeps the classes already in the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import REAL_AD, print_table
from sklearn.metrics import roc_auc_score

from tailedcore import TailedCore
from tailedcore.data import list_images
from tailedcore.tail import LinkageTailSampler, TailInputs
from tailedcore.views import augmented_views, view_transforms

MEMORIES = ("image alone", "47 views (paper)", "flipped copy", "views within the cut")


def nearest_per_view(tests: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """tests (t, p, d), memory (v, q, d) float32 -> (t, p, v): each test patch's squared L2 distance to its
    nearest patch of each memory image (the original and its views)."""
    flat = memory.reshape(-1, memory.shape[-1])
    squares = (flat * flat).sum(1)
    out = []
    for patches in tests:
        distances = (patches * patches).sum(1)[:, None] + squares[None] - 2.0 * patches @ flat.T
        out.append(distances.reshape(len(patches), len(memory), -1).min(2).values.clamp_min(0.0))
    return torch.stack(out)


def image_scores(per_view: torch.Tensor, members: np.ndarray) -> np.ndarray:
    """(t, p, v) distances, (v,) bool memory members -> (t,) image scores: the largest patch distance to the
    nearest patch among the members."""
    return per_view[:, :, torch.from_numpy(members)].min(2).values.max(1).values.numpy()


def memberships(transforms: list[tuple[float, bool]], distances: np.ndarray, cut: float) -> dict[str, np.ndarray]:
    """(v,) bool members of each memory; index 0 is the image, 1.. its views (``distances``: (v,) to the image)."""
    image = np.arange(len(transforms) + 1) == 0
    flipped = np.array([False] + [angle == 0 and flip for angle, flip in transforms])
    return dict(zip(MEMORIES, (image, np.ones_like(image), image | flipped, distances <= cut)))


def run_class(root: Path, name: str, images: int, per_label: int, seed: int) -> list[dict]:
    detector = TailedCore(progress=False)
    extractor, linkage = detector.extractor, LinkageTailSampler()
    transforms = view_transforms()
    rng = np.random.default_rng(seed)
    good = list_images(root / name / "test" / "good")
    defective = [p for folder in sorted((root / name / "test").iterdir()) if folder.name != "good"
                 for p in list_images(folder)]
    tests = [*rng.choice(good, min(per_label, len(good)), replace=False),
             *rng.choice(defective, min(per_label, len(defective)), replace=False)]
    labels = np.array([0] * min(per_label, len(good)) + [1] * min(per_label, len(defective)))
    batches = [extractor.features(extractor.standardise(extractor.load(tests[i : i + 16]))).patches
               for i in range(0, len(tests), 16)]
    test_patches = torch.from_numpy(np.concatenate(batches))
    train = list_images(root / name / "train" / "good")
    rows = []
    for pick in rng.choice(len(train), images, replace=False):
        image = extractor.standardise(extractor.load([train[pick]]))[0]
        batch = extractor.features(torch.cat([image[None], augmented_views(image, transforms)]), with_embeddings=True)
        inputs = TailInputs(batch.embeddings, batch.patches.mean(axis=1))
        distances = linkage.distances_between(TailInputs(inputs.embeddings[:1], inputs.mean_patches[:1]), inputs)[0]
        per_view = nearest_per_view(test_patches, torch.from_numpy(batch.patches))
        members = memberships(transforms, distances, linkage.distance)
        rows.append({"image": train[pick].name, "views_within_cut": int(members[MEMORIES[3]].sum()) - 1,
                     "view_distances": [round(float(d), 4) for d in distances[1:]],
                     **{memory: float(roc_auc_score(labels, image_scores(per_view, mask)))
                        for memory, mask in members.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=REAL_AD)
    parser.add_argument("--classes", nargs="+", default=None, help="default: every class of root")
    parser.add_argument("--images", type=int, default=3, help="one-image products drawn per class")
    parser.add_argument("--per-label", type=int, default=40, help="good and defective test images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="keep the classes already in --json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = args.classes or sorted(p.name for p in args.root.iterdir() if (p / "train").is_dir())
    results = json.loads(args.json.read_text()) if args.resume and args.json.is_file() else {}
    for name in classes:
        if name not in results:
            results[name] = run_class(args.root, name, args.images, args.per_label, args.seed)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    table = []
    for name, rows in results.items():
        means = {memory: 100 * np.mean([row[memory] for row in rows]) for memory in MEMORIES}
        gains = [100 * (row[MEMORIES[1]] - row[MEMORIES[0]]) for row in rows]
        table.append([name, len(rows), *(f"{means[m]:.1f}" for m in MEMORIES),
                      f"{np.mean(gains):+.1f} ({min(gains):+.1f} to {max(gains):+.1f})",
                      f"{np.mean([row['views_within_cut'] for row in rows]):.0f}"])
    print_table(["class", "images", *MEMORIES, "the views' gain (per image)", "views kept by the cut"], table)


if __name__ == "__main__":
    main()
