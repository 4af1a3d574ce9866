"""Unknown product: does the nearest-member rule tell an unseen product from the products a model knows?

Leave one class of an MVTec-layout root out of training at a time: the
products are found on the training images of the other classes
(products.find_products, default linkage estimator), and every test image
(good and defective) of every class is assigned to its nearest product member
(mean patch features, Products.assign). The rule: an image is an unknown
product when that distance is above ``factor`` x its product's spread
(Products.unknown_limits). Reported per left-out class and factor: the share of
its test images flagged unknown (target >= 95%), and the share of the other
classes' test images flagged (target <= 2%), good and defective apart.

The factor is chosen leave-one-class-out: for each left-out class, on the runs
of the other classes only (the largest mean of left-out share minus known
share), then reported on the run of that class.

    python benchmarks/unknown_product.py ../shared/data/real-ad --json docs/unknown_product.json

With ``--tail-draws N``, products known from one image: N draws of three full
(head) classes, one training image of each other class but one, and that class
left out; the share of the left-out class's test images flagged, and of the
one-image classes' test images, for the rule as it is and two variants of the
limit of small products.

Mean patch features come from the default backbone and are cached in
benchmarks/.cache.
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


FACTORS = (1.5, 2.0, 2.5, 3.0, 4.0)
KEYS = ("left_out", "known", "known_good", "known_defective")


def chosen_factor(results: dict, unseen: str) -> float:
    """The factor with the largest mean of (left-out share - known share) over the runs other than ``unseen``."""
    def margin(factor: float) -> float:
        runs = [shares[str(factor)] for name, shares in results.items() if name != unseen]
        return float(np.mean([run["left_out"] - run["known"] for run in runs]))
    return max(FACTORS, key=margin)


# The limit of a product under each variant of the rule (products.Products.unknown_limits is "median").
TAIL_VARIANTS = {
    "median spread (the rule)": lambda products, factor: products.unknown_limits(factor),
    "largest spread below 5 images": lambda products, factor: np.where(
        products.sizes < 5, factor * np.nanmax(products.spreads()), products.unknown_limits(factor)),
    "never near a tail product": lambda products, factor: np.where(products.tail, np.inf,
                                                                   products.unknown_limits(factor)),
}


def tail_draws(draws: int, names: list[str], train: list, train_inputs: TailInputs, test_means: np.ndarray,
               test_classes: np.ndarray, factor: float = 2.5, seed: int = 0) -> dict:
    """Shares flagged unknown with products known from one image (see the module text), per variant:
    mean and worst over the draws of the left-out class's share, the one-image classes' and the heads'."""
    rng = np.random.default_rng(seed)
    train_classes = np.array([c for c, _ in train])
    shares: dict = {variant: {"left_out": [], "one_image": [], "heads": []} for variant in TAIL_VARIANTS}
    for draw in range(draws):
        heads = list(rng.choice(names, 3, replace=False))
        rest = [name for name in names if name not in heads]
        left_out = rest[draw % len(rest)]
        tails = [name for name in rest if name != left_out]
        chosen = np.concatenate([np.flatnonzero(np.isin(train_classes, heads)),
                                 [rng.choice(np.flatnonzero(train_classes == name)) for name in tails]]).astype(int)
        products = find_products(TailInputs(train_inputs.embeddings[chosen], train_inputs.mean_patches[chosen]),
                                 [train[i][1] for i in chosen], LinkageTailSampler())
        assigned, distances = products.assign(test_means)
        for variant, limits in TAIL_VARIANTS.items():
            unknown = distances > limits(products, factor)[assigned]
            shares[variant]["left_out"].append(float(unknown[test_classes == left_out].mean()))
            shares[variant]["one_image"].append(float(np.mean([unknown[test_classes == t].mean() for t in tails])))
            shares[variant]["heads"].append(float(np.mean([unknown[test_classes == h].mean() for h in heads])))
    return {variant: {key: {"mean": float(np.mean(values)), "worst": float(min(values) if key == "left_out"
                                                                            else max(values))}
                      for key, values in by_key.items()} for variant, by_key in shares.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--tail-draws", type=int, default=0, help="draws of the one-image-product measurement")
    args = parser.parse_args()
    items = load_mvtec(args.root)
    train = [(item.name, sample.path) for item in items for sample in item.train]
    test = [(item.name, sample.path, sample.label) for item in items for sample in item.test]
    train_embeddings, train_means = image_features([p for _, p in train], f"{args.root.name}_train")
    _, test_means = image_features([p for _, p, _ in test], f"{args.root.name}_test")
    train_classes = np.array([c for c, _ in train])
    test_classes, test_labels = np.array([c for c, _, _ in test]), np.array([label for _, _, label in test])
    results, products_found = {}, {}
    for item in items:
        known = np.flatnonzero(train_classes != item.name)
        products = find_products(TailInputs(train_embeddings[known], train_means[known]),
                                 [train[i][1] for i in known], LinkageTailSampler())
        assigned, distances = products.assign(test_means)
        results[item.name] = {}
        for factor in FACTORS:
            unknown = products.is_unknown(assigned, distances, factor)
            results[item.name][str(factor)] = flagged_shares(unknown, test_classes, test_labels, item.name)
        products_found[item.name] = len(products)
    rows, unseen = [], {}
    for name, by_factor in results.items():
        factor = chosen_factor(results, name)
        unseen[name] = {"factor": factor, **by_factor[str(factor)]}
        rows.append([name, products_found[name], factor] + [f"{100 * unseen[name][k]:.1f}" for k in KEYS])
    means = {key: float(np.mean([run[key] for run in unseen.values()])) for key in KEYS}
    rows.append(["mean", "", ""] + [f"{100 * means[k]:.1f}" for k in KEYS])
    print_table(["left out", "products found", "factor chosen on the others", "left-out flagged %",
                 "known flagged %", "known good %", "known defective %"], rows)
    by_factor = {str(f): {k: float(np.mean([results[n][str(f)][k] for n in results])) for k in KEYS} for f in FACTORS}
    print_table(["factor"] + [f"{k} %" for k in KEYS],
                [[f] + [f"{100 * by_factor[str(f)][k]:.1f}" for k in KEYS] for f in FACTORS])
    tails = {}
    if args.tail_draws:
        tails = tail_draws(args.tail_draws, [item.name for item in items], train,
                           TailInputs(train_embeddings, train_means), test_means, test_classes)
        print_table(["limit of small products", "left-out flagged % (worst)", "one-image classes flagged % (worst)",
                     "head classes flagged % (worst)"],
                    [[variant] + [f"{100 * v[k]['mean']:.1f} ({100 * v[k]['worst']:.1f})"
                                  for k in ("left_out", "one_image", "heads")] for variant, v in tails.items()])
    if args.json:
        args.json.write_text(json.dumps({"one_image_products": tails,
            "rule": "distance of mean patch features to the nearest member above factor x the product's spread",
            "products_found": products_found, "by_left_out_and_factor": results, "mean_by_factor": by_factor,
            "leave_one_class_out": unseen, "mean": means}, indent=1) + "\n")


if __name__ == "__main__":
    main()
