"""The head step under stress: TailedCore's LOF step against PatchCore, class by class, on one NLT set.

Each variant is fitted on every training image of DATA (an NLT set from
make-nlt) and scored on each class's test split: per-class image AUROC, its
difference to PatchCore, and the share of each class's patches the LOF step
dropped. Besides the normal runs, "forced miss" runs hand the true tail to the
head step as if the tail estimator had missed it (the estimator's tail minus the
true tail images), so the cost of a missed tail image is measured, not guessed;
"merged miss" runs put each true tail image in the product of its nearest other
image, where a too-loose cut puts a missed tail (the head step then sees it
among another product's images). With --shares, each image's share of patches
above its product's LOF fence is recorded for both (the images an unlike share
would keep whole).

    python benchmarks/head_step.py --data runs/step-k1/seed-1/data --out docs/head_step.json --resume

Variants: PatchCore; TailedCore with the paper's head step (LOF scale "global"),
with LOF scores relative to each image's median ("image") and with the top
share of each product's patches dropped ("product"), or only those above
each product's upper Tukey fence ("product-fence"), or those only in each
product's outlying images and far-out ones anywhere ("product-gated"; "-only"
without the far-out ones; "-unlike50" / "-unlike90": images with more than half /
nine tenths of their patches above the fence kept whole; "-tail": and made tail
images, with views);
each TailedCore also forced to miss the tail; and
TailedCore with no head step at all ("no-lof": what the rest of TailedCore
costs or gains a head class). Feature batches are cached in --cache-dir and
shared by the variants.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from common import print_table

from tailedcore.bench.benchmark import dataset_info, run_environment, tail_diagnostics
from tailedcore.data import as_paths, load_mvtec
from tailedcore.evaluation import evaluate_samples
from tailedcore.memory import MemoryBank
from tailedcore.methods import METHODS
from tailedcore.policies import LOFFilter, PolicyResult, TailedCorePolicy
from tailedcore.tail import LinkageTailSampler, TailEstimate, TailInputs


@dataclass(frozen=True)
class MissedTail(LinkageTailSampler):
    """The linkage estimator, except that the ``missed`` training images (indices) are never in its tail (the
    fit decides the tail from the products' clusters with ``estimate_from_clusters``)."""

    missed: tuple = ()

    def estimate_from_clusters(self, clusters: np.ndarray) -> TailEstimate:
        found = super().estimate_from_clusters(clusters)
        return replace(found, tail_indices=np.setdiff1d(found.tail_indices, np.asarray(self.missed, dtype=np.int64)))


def _images(inputs: TailInputs, rows: np.ndarray) -> TailInputs:
    return TailInputs(inputs.embeddings[rows], inputs.mean_patches[rows])


@dataclass(frozen=True)
class MergedTail(LinkageTailSampler):
    """The linkage estimator, except that each of the ``merged`` training images (indices) joins the cluster of
    its nearest image outside them: a tail missed the way a too-loose cut misses it, inside a head product."""

    merged: tuple = ()

    def clusters(self, inputs: TailInputs) -> np.ndarray:
        clusters = super().clusters(inputs)
        merged = np.asarray(self.merged, dtype=np.int64)
        if not len(merged):
            return clusters
        others = np.setdiff1d(np.arange(len(clusters)), merged)
        nearest = others[self.distances_between(_images(inputs, merged), _images(inputs, others)).argmin(axis=1)]
        clusters = clusters.copy()
        clusters[merged] = clusters[nearest]
        return clusters


class Variant(NamedTuple):
    """A run: the method, the head step's LOFFilter (None: PatchCore), the true tail as the head step gets it
    ("found"; "missed": products of their own, outside the tail; "merged": each image in the product of its
    nearest other image) and whether the images kept whole as unlike their product join the tail."""

    method: str
    lof: LOFFilter | None
    true_tail: str = "found"
    unlike_tail: bool = False


GATED = LOFFilter(scale="product", share="gated")
UNLIKE_HALF = LOFFilter(scale="product", share="gated", unlike_share=0.5)
UNLIKE_NINE_TENTHS = LOFFilter(scale="product", share="gated", unlike_share=0.9)
VARIANTS = {
    "patchcore": Variant("patchcore", None),
    "tailedcore": Variant("tailedcore", LOFFilter()),
    "tailedcore-image-lof": Variant("tailedcore", LOFFilter(scale="image")),
    "forced-miss": Variant("tailedcore", LOFFilter(), "missed"),
    "forced-miss-image-lof": Variant("tailedcore", LOFFilter(scale="image"), "missed"),
    "tailedcore-product-lof": Variant("tailedcore", LOFFilter(scale="product")),
    "forced-miss-product-lof": Variant("tailedcore", LOFFilter(scale="product"), "missed"),
    "tailedcore-product-fence": Variant("tailedcore", LOFFilter(scale="product", share="fence")),
    "forced-miss-product-fence": Variant("tailedcore", LOFFilter(scale="product", share="fence"), "missed"),
    "tailedcore-product-gated": Variant("tailedcore", GATED),
    "forced-miss-product-gated": Variant("tailedcore", GATED, "missed"),
    "tailedcore-product-gated-only": Variant("tailedcore", LOFFilter(scale="product", share="gated-only")),
    "tailedcore-no-lof": Variant("tailedcore", LOFFilter(drop=0.0)),
    "merged-miss-product-gated": Variant("tailedcore", GATED, "merged"),
    "tailedcore-product-gated-unlike50": Variant("tailedcore", UNLIKE_HALF),
    "merged-miss-product-gated-unlike50": Variant("tailedcore", UNLIKE_HALF, "merged"),
    "tailedcore-product-gated-unlike90": Variant("tailedcore", UNLIKE_NINE_TENTHS),
    "merged-miss-product-gated-unlike90": Variant("tailedcore", UNLIKE_NINE_TENTHS, "merged"),
    "tailedcore-product-gated-unlike90-tail": Variant("tailedcore", UNLIKE_NINE_TENTHS, unlike_tail=True),
    "merged-miss-product-gated-unlike90-tail": Variant("tailedcore", UNLIKE_NINE_TENTHS, "merged",
                                                       unlike_tail=True),
}


@dataclass(frozen=True)
class FenceSharesOnly(TailedCorePolicy):
    """Not a memory: the head step's LOF scores only, and each image's share of patches above its product's fence
    (diagnostics "fence_shares", (n,) float64); the memory is one patch."""

    def build(self, train, rng, progress=False):
        scores = self.lof.apply(train.projected, train.timer, progress, train.engine, train.products).scores
        shares = self.lof.fence_shares(scores, train.products)
        return PolicyResult(MemoryBank(train.patches[np.zeros(1, dtype=np.int64)]), {"fence_shares": shares},
                            np.zeros(1, dtype=np.int64))


def class_names(paths: list[Path], data: Path) -> np.ndarray:
    """The class (first folder under ``data``) of each image."""
    return np.array([path.resolve().relative_to(data.resolve()).parts[0] for path in paths])


def true_tail_indices(data: Path, info: dict) -> tuple[int, ...]:
    """Indices, in the order a fit lists the training images of ``data``, of the images of tail classes."""
    return tuple(int(i) for i in np.flatnonzero(np.isin(class_names(as_paths(data), data), info["tail"])))


def dropped_by_class(diagnostics: dict, paths: list[Path], data: Path) -> dict[str, float]:
    """Mean share of each class's training patches the LOF step dropped."""
    if "dropped_share" not in diagnostics:
        return {}
    classes = class_names(paths, data)
    dropped = diagnostics["dropped_share"]
    return {name: float(dropped[classes == name].mean()) for name in sorted(set(classes))}


def dropped_injected(diagnostics: dict, paths: list[Path], data: Path, info: dict) -> dict[str, float]:
    """Mean share of patches the LOF step dropped from the injected defective training images and from the
    clean images of the classes that received them."""
    if "dropped_share" not in diagnostics or not info["injected_files"]:
        return {}
    relative = np.array([path.resolve().relative_to(data.resolve()).as_posix() for path in paths])
    injected = np.isin(relative, info["injected_files"])
    noisy_classes = np.isin(class_names(paths, data), sorted({name.split("/")[0] for name in info["injected_files"]}))
    dropped = diagnostics["dropped_share"]
    return {"injected": float(dropped[injected].mean()), "clean": float(dropped[noisy_classes & ~injected].mean())}


def unlike_by_class(diagnostics: dict, paths: list[Path], data: Path, info: dict) -> dict[str, list[int]]:
    """Per class with any, [images kept whole as unlike their product, injected images among them]."""
    if "unlike" not in diagnostics:
        return {}
    classes = class_names(paths, data)
    relative = np.array([path.resolve().relative_to(data.resolve()).as_posix() for path in paths])
    injected = np.isin(relative, info["injected_files"])
    unlike = diagnostics["unlike"]
    return {name: [int(unlike[classes == name].sum()), int((unlike & injected)[classes == name].sum())]
            for name in sorted(set(classes[unlike]))}


def merged_into(products: np.ndarray, paths: list[Path], data: Path, info: dict) -> dict[str, list[str]]:
    """For each tail class, the class most of each of its images' product-mates belong to (itself when alone)."""
    classes = class_names(paths, data)
    joined = {}
    for name in info["tail"]:
        for image in np.flatnonzero(classes == name):
            mates = classes[(products == products[image]) & (classes != name)]
            names, counts = np.unique(mates, return_counts=True)
            joined.setdefault(name, []).append(str(names[counts.argmax()]) if len(mates) else name)
    return joined


def shares_by_class(data: Path, info: dict, cache_dir: Path, true_tail: str, threads: int | None) -> dict:
    """Per class, its role and the share of patches above its product's fence (lof.fence_shares) of each clean
    and each injected training image, largest first: the tail found ("found") or merged into the product of
    its nearest other image ("merged")."""
    tail = true_tail_indices(data, info) if true_tail == "merged" else ()
    detector = METHODS["tailedcore"](calibration_share=0.0, progress=False, threads=threads)
    detector.set_params(policy=FenceSharesOnly(lof=GATED, tail=MergedTail(merged=tail)))
    detector.fit(data, cache_dir=cache_dir)
    paths = [Path(path) for path in detector.products_.paths]
    classes = class_names(paths, data)
    relative = np.array([path.resolve().relative_to(data.resolve()).as_posix() for path in paths])
    injected = np.isin(relative, info["injected_files"])
    shares = detector.diagnostics_["fence_shares"]
    return {name: {"role": info["classes"][name]["role"],
                   "clean": sorted((round(float(v), 4) for v in shares[(classes == name) & ~injected]), reverse=True),
                   "injected": sorted((round(float(v), 4) for v in shares[(classes == name) & injected]),
                                      reverse=True)}
            for name in sorted(set(classes))}


def shares_table(shares: dict) -> tuple[list[str], list[list[str]]]:
    """Per class: role, its clean images' largest share, its injected images' median and largest share and
    how many are above one half and nine tenths (tail found), and the shares of its images merged into another
    product (a tail class's, merged miss)."""
    header = ["class", "role", "clean: largest", "injected: median / largest", "injected > 0.5 / > 0.9",
              "tail merged: smallest / largest"]
    rows = []
    for name, found in shares["found"].items():
        injected, merged = found["injected"], shares["merged"][name]["clean"]
        rows.append([name, found["role"], f"{found['clean'][0]:.2f}",
                     f"{np.median(injected):.2f} / {injected[0]:.2f}" if injected else "-",
                     f"{sum(v > 0.5 for v in injected)} / {sum(v > 0.9 for v in injected)} of {len(injected)}"
                     if injected else "-",
                     f"{merged[-1]:.2f} / {merged[0]:.2f}" if found["role"] == "tail" else "-"])
    return header, rows


def run_variant(name: str, data: Path, info: dict, cache_dir: Path, search_options: dict,
                threads: int | None = None) -> dict:
    method, lof, true_tail, unlike_tail = VARIANTS[name]
    detector = METHODS[method](calibration_share=0.0, search="ivf", search_options=search_options, progress=False,
                               threads=threads)
    if method == "tailedcore":
        tail = true_tail_indices(data, info) if true_tail != "found" else ()
        estimator = MergedTail(merged=tail) if true_tail == "merged" else MissedTail(missed=tail)
        detector.set_params(policy=TailedCorePolicy(lof=lof, tail=estimator, unlike_tail=unlike_tail))
    started = time.perf_counter()
    detector.fit(data, cache_dir=cache_dir)
    fit_seconds = time.perf_counter() - started
    image_auroc = {item.name: evaluate_samples(detector, item.name, item.test, item.has_masks).metrics["image_auroc"]
                   for item in load_mvtec(data) if item.test}
    tail = tail_diagnostics(detector.diagnostics_, detector.training_paths_, data, info)
    return {"image_auroc": image_auroc,
            "lof_dropped_by_class": dropped_by_class(detector.diagnostics_, detector.training_paths_, data),
            "lof_dropped_injected": dropped_injected(detector.diagnostics_, detector.training_paths_, data, info),
            "unlike_by_class": unlike_by_class(detector.diagnostics_, detector.training_paths_, data, info),
            "tail_joined": merged_into(detector.products_.labels, [Path(p) for p in detector.products_.paths], data,
                                       info),
            "tail_images": tail.get("predicted_tail_images"), "tail_recall": tail.get("tail_recall"),
            "memory_size": len(detector.memory_), "fit_seconds": fit_seconds}


def table(results: dict, info: dict) -> tuple[list[str], list[list[str]]]:
    """Per class: role, training images, PatchCore's image AUROC, each variant's difference to it
    (and the share of the class's patches its LOF step dropped)."""
    variants = [name for name in VARIANTS if name in results and name != "patchcore"]
    header = ["class", "role", "train", "PatchCore"] + variants
    rows = []
    base = results["patchcore"]["image_auroc"]
    for name in sorted(base):
        row = [name, info["classes"][name]["role"], str(info["classes"][name]["kept"]), f"{100 * base[name]:.1f}"]
        for variant in variants:
            auroc = results[variant]["image_auroc"][name]
            dropped = results[variant]["lof_dropped_by_class"].get(name)
            row.append(f"{100 * (auroc - base[name]):+.1f} (drop {100 * dropped:.0f}%)")
        rows.append(row)
    for group in ("head", "tail"):
        members = [name for name in base if name in info[group]]
        if not members:
            continue
        row = [f"mean {group}", "", "", f"{100 * np.mean([base[n] for n in members]):.1f}"]
        row += [f"{100 * np.mean([results[v]['image_auroc'][n] - base[n] for n in members]):+.1f}" for v in variants]
        rows.append(row)
    return header, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an NLT set (make-nlt)")
    parser.add_argument("--out", type=Path, required=True, help="JSON of the results, written after each variant")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="the variants to run (default: all; none with --shares alone)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/head_step"))
    parser.add_argument("--nprobe", type=int, default=16, help="IVF probes of the test-time search")
    parser.add_argument("--resume", action="store_true", help="keep the variants already in --out")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of each fit")
    parser.add_argument("--shares", action="store_true",
                        help="also each image's share of patches above its product's LOF fence, with the tail found "
                             "and merged (no memory is built for them)")
    args = parser.parse_args()
    info = dataset_info(args.data)
    results = json.loads(args.out.read_text()) if args.resume and args.out.is_file() else {}
    results.setdefault("runs", {})
    results.update(data=str(args.data), profile=info["profile"], environment=run_environment(),
                   command="python benchmarks/head_step.py --data DATA --out OUT --resume")
    for name in args.variants:
        if name in results["runs"]:
            continue
        results["runs"][name] = run_variant(name, args.data, info, args.cache_dir, {"nprobe": args.nprobe},
                                            args.threads)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: fitted in {results['runs'][name]['fit_seconds']:.0f} s", flush=True)
    if args.shares:
        for true_tail in ("found", "merged"):
            if true_tail not in results.setdefault("fence_shares", {}):
                results["fence_shares"][true_tail] = shares_by_class(args.data, info, args.cache_dir, true_tail,
                                                                     args.threads)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
        print_table(*shares_table(results["fence_shares"]))
    if "patchcore" in results["runs"]:
        print_table(*table(results["runs"], info))


if __name__ == "__main__":
    main()
