"""Unknown product: does the nearest-member rule tell an unseen product from the products a model knows?

Leave one class of an MVTec-layout root out of training at a time: the
products are found on the training images of the other classes
(products.find_products, default linkage estimator), and every test image
(good and defective) of every class is assigned to its nearest product member.
The rule: an image is an unknown product when that distance is above the
estimator's cut (it would have joined no product). Reported per left-out class:
the share of its test images flagged unknown (target >= 95%), and the share of
the other classes' test images flagged (target <= 2%), good and defective apart.

    python benchmarks/unknown_product.py ../shared/data/real-ad --json docs/unknown_product.json

Image embeddings and mean patch features come from the default backbone and
are cached in benchmarks/.cache.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import CACHE, print_table

from tailedcore import PatchCore
from tailedcore.data import load_mvtec
from tailedcore.products import find_products
from tailedcore.tail import LinkageTailSampler, TailInputs


def image_features(paths: list[Path], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, E) embeddings and (n, D) mean patch features of ``paths`` (default features), cached as ``name``."""
    path = CACHE / f"unknown_product_{name}.npz"
    if path.is_file():
        cached = np.load(path)
        return cached["embeddings"], cached["mean_patches"]
    extractor = PatchCore(progress=False).extractor
    embeddings, means = [], []
    for _, batch in extractor.iter_batches(paths, with_embeddings=True):
        embeddings.append(batch.embeddings)
        means.append(batch.patches.mean(axis=1))
    CACHE.mkdir(exist_ok=True)
    np.savez(path, embeddings=np.concatenate(embeddings), mean_patches=np.concatenate(means))
    return image_features(paths, name)


def flagged_shares(unknown: np.ndarray, classes: np.ndarray, labels: np.ndarray, left_out: str) -> dict:
    """Shares of test images flagged unknown: the left-out class's, and the others' (all, good, defective)."""
    theirs = classes == left_out
    return {"left_out": float(unknown[theirs].mean()),
            "known": float(unknown[~theirs].mean()),
            "known_good": float(unknown[~theirs & (labels == 0)].mean()),
            "known_defective": float(unknown[~theirs & (labels == 1)].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    items = load_mvtec(args.root)
    train = [(item.name, sample.path) for item in items for sample in item.train]
    test = [(item.name, sample.path, sample.label) for item in items for sample in item.test]
    train_embeddings, train_means = image_features([p for _, p in train], f"{args.root.name}_train")
    test_embeddings, test_means = image_features([p for _, p, _ in test], f"{args.root.name}_test")
    train_classes = np.array([c for c, _ in train])
    test_classes, test_labels = np.array([c for c, _, _ in test]), np.array([label for _, _, label in test])
    estimator = LinkageTailSampler()
    rows, results = [], {}
    for item in items:
        known = np.flatnonzero(train_classes != item.name)
        products = find_products(TailInputs(train_embeddings[known], train_means[known]),
                                 [train[i][1] for i in known], estimator)
        _, distances = products.assign(test_embeddings, test_means)
        shares = flagged_shares(products.is_unknown(distances), test_classes, test_labels, item.name)
        results[item.name] = {**shares, "products": len(products)}
        rows.append([item.name, len(products)] + [f"{100 * shares[k]:.1f}" for k in
                                                   ("left_out", "known", "known_good", "known_defective")])
    means = {key: float(np.mean([r[key] for r in results.values()]))
             for key in ("left_out", "known", "known_good", "known_defective")}
    rows.append(["mean", ""] + [f"{100 * means[k]:.1f}" for k in means])
    print_table(["left out", "products found", "left-out flagged %", "known flagged %", "known good %",
                 "known defective %"], rows)
    if args.json:
        args.json.write_text(json.dumps({"rule": f"nearest member farther than the cut {estimator.distance}",
                                         "classes": results, "mean": means}, indent=1) + "\n")


if __name__ == "__main__":
    main()
