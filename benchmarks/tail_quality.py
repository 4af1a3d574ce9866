"""How well each tail estimator finds the tail, on noisy long-tail training mixes, without fitting.

Builds the NLT training mixes of SOURCE as plans only (no files written) for every profile x seed x
noise level, computes every image's inputs to the estimators once (image embedding and projected patch
grid, cached under benchmarks/.cache), runs every tail estimator on every mix and reports per mix and
as means over mixes:
- recall: share of the true tail images (images of tail classes) that the estimator puts in the tail;
- precision: share of the estimated tail that belongs to tail classes (1 when the tail is empty);
- injected_in_tail: share of the injected defective images put in the tail;
- class_size_error: median over images of |estimated - true| / true class size;
- max_k and seconds (the estimator alone).

    python benchmarks/tail_quality.py ../shared/data/real-ad --json docs/tail_quality.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import CACHE, print_table

from tailedcore import PatchCore
from tailedcore.bench.nlt import plan_profile
from tailedcore.data import load_mvtec
from tailedcore.tail import TailInputs, make_tail_estimator

# Each estimator as NAME or NAME:KEY=VALUE,...; "centre=1" (harness only) centres the embeddings first.
ESTIMATORS = [
    "paper",
    "paper:centre=1",
    "linkage",
    "linkage:max_tail_class=none",
    "linkage:features=embedding",
    "linkage:features=patches",
    "linkage:distance=0.3",
    "linkage:distance=0.5",
]


@dataclass
class Inputs:
    """Every image an NLT mix of SOURCE can hold: relative paths (n,), embeddings (n, E), mean patches (n, D)."""

    paths: list[str]
    embeddings: np.ndarray
    mean_patches: np.ndarray

    def rows(self, relative_paths: list[str]) -> np.ndarray:
        index = {path: i for i, path in enumerate(self.paths)}
        return np.asarray([index[p] for p in relative_paths], dtype=np.int64)

    def tail_inputs(self, rows: np.ndarray) -> TailInputs:
        """What an estimator sees of the images ``rows``."""
        return TailInputs(self.embeddings[rows], self.mean_patches[rows])


def candidate_images(source: Path) -> list[str]:
    """Relative paths of every train/good image and every defective test image of SOURCE."""
    paths = []
    for item in load_mvtec(source):
        paths += [s.path.relative_to(source).as_posix() for s in item.train]
        paths += [s.path.relative_to(source).as_posix() for s in item.test if s.label == 1]
    return paths


def compute_inputs(source: Path) -> Inputs:
    """Embeddings and mean patch features of every candidate image, cached by paths and feature settings."""
    paths = candidate_images(source)
    extractor = PatchCore(progress=True).extractor  # the detector's default feature settings
    key = hashlib.sha256(json.dumps([str(source.resolve()), paths, extractor.settings()]).encode()).hexdigest()[:16]
    cached = CACHE / f"tail-quality-{key}.npz"
    if cached.is_file():
        with np.load(cached) as arrays:
            return Inputs(paths, arrays["embeddings"], arrays["mean_patches"])
    embeddings = np.empty((len(paths), extractor.backbone.embedding_dim), np.float32)
    mean_patches = np.empty((len(paths), extractor.feature_dim), np.float32)
    for indices, batch in extractor.iter_batches([source / p for p in paths], with_embeddings=True):
        embeddings[indices] = batch.embeddings
        mean_patches[indices] = batch.patches.mean(axis=1)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cached, embeddings=embeddings, mean_patches=mean_patches)
    return Inputs(paths, embeddings, mean_patches)


@dataclass
class Mix:
    """One NLT training mix: image rows into Inputs, class label and injected flag per image, tail classes."""

    name: str
    rows: np.ndarray
    classes: np.ndarray
    injected: np.ndarray
    tail_classes: set[str]


def build_mixes(source: Path, profiles: list[str], seeds: list[int], noises: list[float], inputs: Inputs,
                classes: list[str] | None = None) -> list[Mix]:
    """The mixes of every profile x noise x seed, drawn from SOURCE's ``classes`` (all when None)."""
    mixes = []
    for profile in profiles:
        for noise in noises:
            for seed in seeds:
                plan = plan_profile(source, profile, noise, seed, classes)
                kept = [p for name in plan.kept for p in plan.kept[name]]
                injected = sorted(plan.injected.values())
                paths = kept + injected
                labels = np.asarray([p.split("/")[0] for p in paths])
                flags = np.r_[np.zeros(len(kept), bool), np.ones(len(injected), bool)]
                mixes.append(Mix(f"{profile} noise {noise} seed {seed}", inputs.rows(paths), labels, flags,
                                 set(plan.tail)))
    return mixes


def score(mix: Mix, class_sizes: np.ndarray, tail: np.ndarray) -> dict:
    """Tail-quality figures of one estimate (fractions)."""
    true_tail = np.isin(mix.classes, sorted(mix.tail_classes))
    predicted = np.zeros(len(mix.rows), bool)
    predicted[tail] = True
    names, counts = np.unique(mix.classes, return_counts=True)
    true_size = counts[np.searchsorted(names, mix.classes)]
    hits = int((predicted & true_tail).sum())
    return {
        "recall": hits / max(int(true_tail.sum()), 1),
        "precision": hits / int(predicted.sum()) if predicted.any() else 1.0,
        "injected_in_tail": float(predicted[mix.injected].mean()) if mix.injected.any() else 0.0,
        "class_size_error": float(np.median(np.abs(class_sizes - true_size) / true_size)),
    }


def errors_by_class(mix: Mix, tail: np.ndarray) -> dict[str, dict[str, int]]:
    """Images an estimate gets wrong, counted per class: head images put in the tail (and of them, injected
    defects), and tail images missed."""
    predicted = np.zeros(len(mix.rows), bool)
    predicted[tail] = True
    true_tail = np.isin(mix.classes, sorted(mix.tail_classes))
    groups = {"head_in_tail": predicted & ~true_tail, "injected_in_tail": predicted & mix.injected,
              "tail_missed": ~predicted & true_tail}
    return {name: dict(Counter(mix.classes[mask].tolist())) for name, mask in groups.items()}


def parse_estimator(spec: str) -> tuple[object, bool]:
    """NAME[:KEY=VALUE,...] -> (estimator, centre the embeddings first)."""
    name, _, options = spec.partition(":")
    params: dict = {}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        params[key] = None if value == "none" else json.loads(value) if value[:1].isdigit() else value
    centre = bool(params.pop("centre", False))
    return make_tail_estimator(name, **params), centre


def mix_arguments(description: str, seeds: int) -> argparse.ArgumentParser:
    """A parser with the arguments that say which mixes to draw: SOURCE, profiles, seeds 0..seeds-1, noise."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("source", type=Path)
    parser.add_argument("--profiles", nargs="+", default=["step-k1", "step-k4", "pareto"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(seeds)))
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.2])
    return parser


def main() -> None:
    parser = mix_arguments(__doc__.split("\n")[0], seeds=10)
    parser.add_argument("--estimators", nargs="+", default=ESTIMATORS, help="NAME or NAME:KEY=VALUE,...")
    parser.add_argument("--per-mix", action="store_true", help="print one row per mix and estimator")
    parser.add_argument("--json", type=Path, help="write the means (and every mix) to this file")
    args = parser.parse_args()
    inputs = compute_inputs(args.source)
    mixes = build_mixes(args.source, args.profiles, args.seeds, args.noise, inputs)
    results: dict[str, list[dict]] = {}
    for name in args.estimators:
        estimator, centre = parse_estimator(name)
        for mix in mixes:
            train = inputs.tail_inputs(mix.rows)
            if centre:
                train.embeddings = train.embeddings - train.embeddings.mean(axis=0)
            started = time.perf_counter()
            estimate = estimator.estimate(train)
            seconds = time.perf_counter() - started
            figures = score(mix, estimate.class_sizes, estimate.tail_indices)
            results.setdefault(name, []).append({"mix": mix.name, **figures, "max_k": estimate.max_k,
                                                 "tail_images": len(estimate.tail_indices), "seconds": seconds,
                                                 "errors": errors_by_class(mix, estimate.tail_indices)})
    keys = ["recall", "precision", "injected_in_tail", "class_size_error"]
    if args.per_mix:
        print_table(["estimator", "mix", *keys, "max_k", "tail", "s"],
                    [[name, r["mix"], *(f"{r[k]:.3f}" for k in keys), r["max_k"], r["tail_images"],
                      f"{r['seconds']:.2f}"] for name, rows in results.items() for r in rows])
        print()
    means = {name: {k: float(np.mean([r[k] for r in rows])) for k in keys} for name, rows in results.items()}
    print(f"{len(mixes)} mixes: {', '.join(args.profiles)} x noise {args.noise} x seeds {args.seeds}")
    print_table(["estimator", *keys, "worst recall", "max_k (median)", "seconds (mean)"],
                [[name, *(f"{means[name][k]:.3f}" for k in keys), f"{min(r['recall'] for r in rows):.3f}",
                  int(np.median([r["max_k"] for r in rows])), f"{np.mean([r['seconds'] for r in rows]):.2f}"]
                 for name, rows in results.items()])
    for profile in args.profiles:
        print(f"\n{profile}")
        print_table(["estimator", *keys], [
            [name, *(f"{np.mean([r[k] for r in rows if r['mix'].startswith(profile + ' ')]):.3f}" for k in keys)]
            for name, rows in results.items()])
    print("\nimages wrong over all mixes, by class")
    groups = ["head_in_tail", "injected_in_tail", "tail_missed"]
    totals = {name: {group: sum((Counter(r["errors"][group]) for r in rows), Counter()) for group in groups}
              for name, rows in results.items()}
    print_table(["estimator", *(f"{group} (total: per class)" for group in groups)], [
        [name, *(f"{sum(counts[g].values())}: " + ", ".join(f"{c} {n}" for c, n in sorted(counts[g].items()))
                 for g in groups)] for name, counts in totals.items()])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"estimators": means, "mixes": results}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
