"""Per-product thresholds against one global threshold, on NLT sets.

For each NLT set given (make-nlt), TailedCore (default parameters) is fitted
on every training image with 10% of each product of 20 or more images held out
for calibration; it then scores each class's test split. With the thresholds at
the 1% false-alarm rate, per class (with its training-image count): the share of
test/good images above the threshold (false alarms) and the share of defective
images above it (flagged), with the image's product threshold and with the
global one; the share answered "unknown product"; image AUROC of the raw
scores per class, and pooled over all classes of the normalised scores (one
ranking across products: per product, and global), and the same pooled over
scales no model has (each class's own test/good scores: a bound on what any
per-product normalisation can reach), and pooled with other thresholds for
the products too small to have their own.

    python benchmarks/product_thresholds.py runs/eight/step-k1/seed-0/data ... --json docs/product_thresholds.json

Each set's figures and per-image records (test images, and the held-out
training images with their scores and whether make-nlt injected them as
defects) are kept in the JSON (``--resume``
reads finished sets back). ``--exact-coreset-rows`` makes the fit's coreset
composable over shards of that many rows (minutes instead of most of an hour).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import print_table
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from tailedcore import TailedCore
from tailedcore.data import load_mvtec
from tailedcore.lof import tukey_fence
from tailedcore.thresholds import MIN_IMAGES, SMALL_PRODUCT_RULES, normalise, shared_shape

MIN_TRAINING = 20  # classes with at least this many training images are judged by the targets


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else None


def run_set(data: Path, exact_rows: int | None, seed: int, threads: int | None, small_products: str) -> dict:
    """Fit on ``data``'s training images, score its test images -> figures and per-image records.
    ``small_products``: the fit's rule for products of too few held-out images (thresholds.SMALL_PRODUCT_RULES)."""
    items = load_mvtec(data)
    train = [sample.path for item in items for sample in item.train]
    test = [(item.name, sample.path, sample.label) for item in items for sample in item.test]
    detector = TailedCore(seed=seed, progress=False, threads=threads, search="ivf-batched",
                          search_options={"nprobe": 16, "rerank": 2}, calibration_small_products=small_products)
    if exact_rows is not None:
        detector.set_params(policy__coreset__exact_rows=exact_rows)
    start = time.perf_counter()
    detector.fit(train)
    fit_seconds = time.perf_counter() - start
    calibration_seconds = detector.stage_times_.totals["calibration"].seconds
    predictions = detector.predict([path for _, path, _ in test], strict=True)
    held_out = detector.predict(detector.calibration_paths_, strict=True)  # the scores the fit calibrated on
    injected = set((data / "inject_defects.txt").read_text().split()) if (data / "inject_defects.txt").is_file() \
        else set()
    classes = np.array([name for name, _, _ in test])
    labels = np.array([label for _, _, label in test])
    raw = predictions.image_scores.astype(np.float64)
    own_threshold = predictions.image_thresholds
    global_threshold = detector.thresholds_.image
    per_class = {}
    for item in items:
        mine = classes == item.name
        good, defect = mine & (labels == 0), mine & (labels == 1)
        per_class[item.name] = {
            "training_images": len(item.train),
            "products": sorted({int(p) for p in predictions.products[mine]}),
            "own_threshold": bool(np.isin(predictions.products[mine], list(detector.product_thresholds_)).any()),
            "false_alarms_product": float((raw[good] >= own_threshold[good]).mean()),
            "false_alarms_global": float((raw[good] >= global_threshold).mean()),
            "flagged_product": float((raw[defect] >= own_threshold[defect]).mean()),
            "flagged_global": float((raw[defect] >= global_threshold).mean()),
            "unknown": float(predictions.unknown[mine].mean()),
            "image_auroc": auroc(labels[mine], raw[mine]),
        }
    judged = [name for name, figures in per_class.items() if figures["training_images"] >= MIN_TRAINING]
    return {
        "data": str(data), "policy": detector.policy.to_config(), "small_products": small_products,
        "fit_seconds": fit_seconds,
        "calibration_images": len(detector.calibration_paths_),
        "products": len(detector.products_),
        "product_thresholds": {str(p): t.to_dict() for p, t in detector.product_thresholds_.items()},
        "calibration_seconds": calibration_seconds,
        "global_thresholds": detector.thresholds_.to_dict(),
        "classes": per_class,
        "mean_class_auroc": float(np.mean([f["image_auroc"] for f in per_class.values()])),
        "pooled_auroc_product": auroc(labels, normalise(raw, own_threshold)),
        "pooled_auroc_global": auroc(labels, raw),
        "judged_classes": judged,
        "mean_flagged_product": float(np.mean([per_class[n]["flagged_product"] for n in judged])),
        "mean_flagged_global": float(np.mean([per_class[n]["flagged_global"] for n in judged])),
        "left_out": {str(p): scores.tolist() for p, scores in detector.left_out_scores_.items()},
        "calibration": [{"image": path.resolve().relative_to(data.resolve()).as_posix(), "product": int(product),
                         "raw": float(score),
                         "injected": path.resolve().relative_to(data.resolve()).as_posix() in injected}
                        for path, product, score in zip(held_out.paths, held_out.products, held_out.image_scores)],
        "images": [{"class": name, "label": int(label), "raw": float(score), "product": int(product),
                    "unknown": bool(unknown), "threshold": float(threshold)}
                   for name, label, score, product, unknown, threshold in zip(
                       classes, labels, raw, predictions.products, predictions.unknown, own_threshold)],
    }


def report(name: str, result: dict) -> None:
    rows = [[cls, f["training_images"], "yes" if f["own_threshold"] else "no",
             f"{100 * f['false_alarms_product']:.1f}", f"{100 * f['false_alarms_global']:.1f}",
             f"{100 * f['flagged_product']:.1f}", f"{100 * f['flagged_global']:.1f}", f"{100 * f['unknown']:.1f}",
             f"{100 * f['image_auroc']:.1f}"] for cls, f in result["classes"].items()]
    print(f"\n{name}: {result['products']} products, {len(result['product_thresholds'])} with their own thresholds; "
          f"pooled AUROC {100 * result['pooled_auroc_product']:.1f} (per product) / "
          f"{100 * result['pooled_auroc_global']:.1f} (global), mean per-class {100 * result['mean_class_auroc']:.1f}")
    print_table(["class", "training images", "own threshold", "false alarms % (product)", "(global)",
                 "defects flagged % (product)", "(global)", "unknown %", "image AUROC"], rows)


def threshold_rules(result: dict, rate: float = 0.01) -> list[list]:
    """Per product with its own thresholds from at least MIN_IMAGES held-out training images, five image
    thresholds from them and what they give on its test images: the (1 - rate) quantile (what fit does),
    the same with the images make-nlt injected as defects removed (an oracle: a user cannot know them), a
    log-normal fit to the median and MAD of the log scores (robust to a few defective images), and the
    quantile of the scores within Tukey's upper fence (Q3 + 1.5 IQR) of the scores and of the log scores."""
    held_out, images = result["calibration"], result["images"]
    rows = []
    for product in sorted(int(p) for p in result["product_thresholds"]):
        scores = np.array([c["raw"] for c in held_out if c["product"] == product])
        if len(scores) < MIN_IMAGES:
            continue
        clean = np.array([c["raw"] for c in held_out if c["product"] == product and not c["injected"]])
        logs = np.log(scores)
        spread = 1.4826 * np.median(np.abs(logs - np.median(logs)))
        rules = {"quantile": np.quantile(scores, 1 - rate), "quantile without injected": np.quantile(clean, 1 - rate),
                 "log-normal fit": float(np.exp(np.median(logs) + norm.ppf(1 - rate) * spread)),
                 "quantile within the fence": np.quantile(scores[scores <= tukey_fence(scores, 1.5)], 1 - rate),
                 "quantile within the fence of logs": np.quantile(scores[logs <= tukey_fence(logs, 1.5)], 1 - rate)}
        mine = [x for x in images if x["product"] == product]
        good = np.array([x["raw"] for x in mine if x["label"] == 0])
        defect = np.array([x["raw"] for x in mine if x["label"] == 1])
        names = sorted({x["class"] for x in mine})
        for rule, threshold in rules.items():
            rows.append([product, "/".join(names), f"{len(scores)} ({len(scores) - len(clean)} injected)", rule,
                         f"{threshold:.0f}", f"{100 * (good >= threshold).mean():.1f}",
                         f"{100 * (defect >= threshold).mean():.1f}"])
    return rows


def pooled_bounds(result: dict) -> dict[str, float]:
    """Pooled image AUROC (all classes, one ranking) when each class's scores are put on a common scale by
    its own test/good scores: an oracle no model has (it needs the test labels), so a bound on what any
    per-product normalisation can reach. Scales: the share of the class's good scores strictly below a
    score (empirical CDF), (log score - median) / IQR of the good log scores, and score / 99th
    percentile of the good scores. Beside them the mean per-class AUROC, the model's per-product
    normalisation and the raw scores."""
    images = result["images"]
    raw = np.array([x["raw"] for x in images], dtype=np.float64)
    labels = np.array([x["label"] for x in images])
    classes = np.array([x["class"] for x in images])
    scaled = {name: np.zeros_like(raw) for name in ("good-score CDF", "robust z of logs", "99th percentile")}
    per_class = []
    for name in np.unique(classes):
        mine = classes == name
        good = np.sort(raw[mine & (labels == 0)])
        logs = np.log(good)
        # share strictly below, so only scores above every good one reach 1; ties broken by the raw score
        scaled["good-score CDF"][mine] = np.searchsorted(good, raw[mine], side="left") / good.size \
            + 1e-9 * raw[mine] / raw.max()
        scaled["robust z of logs"][mine] = (np.log(raw[mine]) - np.median(logs)) / np.subtract(
            *np.quantile(logs, [0.75, 0.25]))
        scaled["99th percentile"][mine] = raw[mine] / np.quantile(good, 0.99)
        per_class.append(auroc(labels[mine], raw[mine]))
    thresholds = np.array([x["threshold"] for x in images], dtype=np.float64)
    return {"mean per-class AUROC": float(np.mean(per_class)),
            **{f"oracle: {name}": auroc(labels, values) for name, values in scaled.items()},
            "per product (the model)": auroc(labels, normalise(raw, thresholds)), "raw": auroc(labels, raw)}


def fallback_rules(result: dict) -> dict[str, float]:
    """Pooled image AUROC of the normalised scores (all classes, one ranking) when the products without
    their own thresholds take the global threshold (what fit does), the median of the products' own
    thresholds, or the largest of them (the global alone when no product has its own); the products with
    their own keep them."""
    images = result["images"]
    own = {int(product): t["image"] for product, t in result["product_thresholds"].items()}
    raw = np.array([x["raw"] for x in images], dtype=np.float64)
    labels = np.array([x["label"] for x in images])
    products = [x["product"] for x in images]
    values = np.array(list(own.values()))
    rules = {"the global threshold (what fit does)": result["global_thresholds"]["image"]}
    if len(values):
        rules |= {"the median of the products' own": float(np.median(values)),
                  "the largest of the products' own": float(values.max())}
    return {rule: auroc(labels, normalise(raw, np.array([own.get(p, fallback) for p in products])))
            for rule, fallback in rules.items()}


def small_product_rules(result: dict, rate: float = 0.01) -> dict[str, list]:
    """The thresholds of the products whose own rest on fewer than MIN_IMAGES calibration images (held-out and
    left-out image scores, as the fit calibrated them), by three rules, and what they give: "own quantile"
    (what fit does: the (1 - rate) quantile of the product's scores), "shared shape" (the product's median
    score times thresholds.shared_shape of every calibration image's score, so that a small product needs
    only its median) and "shared shape, every product" (the same for the products
    of MIN_IMAGES or more too). Per rule: pooled AUROC, the judged classes above 3% false alarms, defects
    flagged % on the judged classes, false alarms % and defects flagged % on the others."""
    left_out = {int(p): values for p, values in result.get("left_out", {}).items()}
    calibration = np.array([image["raw"] for image in result["calibration"]]
                           + [value for values in left_out.values() for value in values])
    of_image = np.array([image["product"] for image in result["calibration"]]
                        + [p for p, values in left_out.items() for _ in values])
    labels, product_medians, shape = shared_shape(calibration, of_image, rate)
    medians = dict(zip(labels.tolist(), product_medians))
    own = {int(p): t["image"] for p, t in result["product_thresholds"].items()}
    small = {p for p in own if (of_image == p).sum() < MIN_IMAGES}
    rules = {"own quantile (what fit does)": own,
             "shared shape": {p: medians[p] * shape if p in small else t for p, t in own.items()},
             "shared shape, every product": {p: medians[p] * shape for p in own}}
    images, judged = result["images"], set(result["judged_classes"])
    raw = np.array([x["raw"] for x in images], dtype=np.float64)
    labels = np.array([x["label"] for x in images])
    classes = np.array([x["class"] for x in images])
    rows = {}
    for rule, thresholds in rules.items():
        threshold = np.array([thresholds.get(x["product"], result["global_thresholds"]["image"]) for x in images])
        above = raw >= threshold
        alarms = {c: above[(classes == c) & (labels == 0)].mean() for c in np.unique(classes)}
        flagged = {c: above[(classes == c) & (labels == 1)].mean() for c in np.unique(classes)}
        tails = [c for c in alarms if c not in judged]
        rows[rule] = [f"{100 * auroc(labels, normalise(raw, threshold)):.1f}",
                      ", ".join(f"{c} {100 * alarms[c]:.1f}" for c in sorted(judged) if alarms[c] > 0.03) or "none",
                      f"{100 * np.mean([flagged[c] for c in judged]):.1f}",
                      f"{100 * np.mean([alarms[c] for c in tails]):.1f}" if tails else "-",
                      f"{100 * np.mean([flagged[c] for c in tails]):.1f}" if tails else "-"]
    return rows


def summary_row(name: str, result: dict, most: float = 0.03) -> list:
    """One set's figures against the targets: products with their own thresholds, the classes judged (at
    least MIN_TRAINING training images) and those whose false alarms at their product's threshold are
    above ``most``, defects flagged on average (per product / global), and pooled AUROC (per product /
    the best oracle scale / the mean per-class AUROC)."""
    judged = result["judged_classes"]
    outside = [f"{c} {100 * result['classes'][c]['false_alarms_product']:.1f}" for c in judged
               if result["classes"][c]["false_alarms_product"] > most]
    oracle = max(value for rule, value in pooled_bounds(result).items() if rule.startswith("oracle"))
    return [name, len(result["product_thresholds"]), ", ".join(judged), ", ".join(outside) or "none",
            f"{100 * result['mean_flagged_product']:.1f} / {100 * result['mean_flagged_global']:.1f}",
            f"{100 * result['pooled_auroc_product']:.1f} / {100 * oracle:.1f} / {100 * result['mean_class_auroc']:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sets", nargs="+", type=Path, help="NLT sets (make-nlt folders)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--exact-coreset-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the fit and the scoring")
    parser.add_argument("--resume", action="store_true", help="keep the sets already in --json")
    parser.add_argument("--small-products", choices=SMALL_PRODUCT_RULES, default="global",
                        help="what the fit gives products of too few held-out images (a set run with another rule "
                        "than global is kept under its name and the rule)")
    args = parser.parse_args()
    results = json.loads(args.json.read_text()) if args.resume and args.json.is_file() else {}
    for data in args.sets:
        name = str(data) if args.small_products == "global" else f"{data} [small products: {args.small_products}]"
        if name not in results:
            results[name] = run_set(data, args.exact_coreset_rows, args.seed, args.threads, args.small_products)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        report(name, results[name])
        print_table(["product", "classes", "held-out images", "threshold rule", "image threshold",
                     "false alarms %", "defects flagged %"], threshold_rules(results[name]))
        print_table(["pooled image AUROC, all classes", "%"],
                    [[rule, f"{100 * value:.1f}"] for rule, value in pooled_bounds(results[name]).items()])
        print_table(["products without their own threshold take", "pooled image AUROC %"],
                    [[rule, f"{100 * value:.1f}"] for rule, value in fallback_rules(results[name]).items()])
        if "left_out" in results[name]:
            print_table(["small products' thresholds", "pooled AUROC %", "judged above 3% false alarms",
                         "defects flagged %, judged", "false alarms %, others", "defects flagged %, others"],
                        [[rule, *row] for rule, row in small_product_rules(results[name]).items()])
    print("\nEvery set in --json against the targets (false alarms at the 1% threshold, within 0-3%):")
    print_table(["set", "products with own thresholds", "classes judged", "false alarms above 3% (%)",
                 "defects flagged % (product / global)", "pooled AUROC % (model / best oracle / mean per class)"],
                [summary_row(name, result) for name, result in results.items()])


if __name__ == "__main__":
    main()
