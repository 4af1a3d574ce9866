"""The noisy long-tail (NLT) benchmark builder.

From any MVTec-layout SOURCE: prune each class's train/good to a long-tailed
profile and inject defective test images into head classes' train/good as
label noise. The plan is written as the reference manifests
(``prune_good.txt``, ``inject_defects.txt``) plus ``nlt.json``, and a set can
be rebuilt from manifests alone. SOURCE is never modified; the destination is
built in a temporary folder beside it and renamed into place when complete.

Profiles (C classes):
- ``step-kK``: round(0.6 C) tail classes, drawn by the seed, keep K images;
  head classes keep all.
- ``pareto``: class sizes follow a discrete Pareto (alpha 6) decay over a
  class order drawn by the seed; the largest keeps all, every class keeps >= 5.
Noise: every head class (>= 20 kept images) receives ``noise`` x kept
defective images of its own test split (at most half of them, so the test
split keeps anomalies). The clean protocol removes injected images (and their
masks) from the destination's test split; the leaky one keeps them there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from scipy.stats import pareto

from .._io import destination_problem, link_or_copy, outside_root, staged_directory, write_json
from ..data import GOOD, load_mvtec

PRUNE_MANIFEST = "prune_good.txt"
INJECT_MANIFEST = "inject_defects.txt"
MIN_HEAD_SIZE = 20
MIN_CLASS_SIZE = 5
PARETO_ALPHA = 6.0
TAIL_CLASS_SHARE = 0.6


class NLTError(ValueError):
    """A profile, manifest or destination cannot be used."""


@dataclass
class NLTPlan:
    """What to build: per class the kept train images, the injected defects, head/tail roles.

    Paths are POSIX strings relative to the dataset root; ``injected`` maps a
    destination entry ``<class>/train/good/<defect>_<file>`` to its source
    ``<class>/test/<defect>/<file>``.
    """

    profile: str
    seed: int | None
    noise: float | None
    train: dict[str, list[str]]
    kept: dict[str, list[str]]
    injected: dict[str, str] = field(default_factory=dict)
    head: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)

    @property
    def pruned(self) -> list[str]:
        return sorted(p for name in self.train for p in set(self.train[name]) - set(self.kept[name]))


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def pareto_sizes(available: list[int], order: np.ndarray) -> list[int]:
    """Kept size per class: Pareto pmf over ranks, class ``order[r]`` at rank r; largest keeps all."""
    n = len(available)
    x = np.linspace(pareto.ppf(0.01, PARETO_ALPHA), pareto.ppf(0.99, PARETO_ALPHA), n + 1)
    pmf = np.diff(pareto.cdf(x, PARETO_ALPHA))  # decreasing with rank
    share = np.empty(n)
    share[order] = pmf
    top = int(np.argmax(share))
    desired = np.round(share * available[top] / share[top]).astype(int)
    return [int(max(min(a, d), MIN_CLASS_SIZE)) for a, d in zip(available, desired)]


def plan_profile(source: str | os.PathLike, profile: str, noise: float = 0.1, seed: int = 0,
                 classes: list[str] | None = None) -> NLTPlan:
    """Draw an NLT plan for ``profile`` (step-kK or pareto) from SOURCE (from its ``classes`` only, when given)."""
    source = Path(source)
    found = load_mvtec(source)
    unknown = sorted(set(classes or []) - {c.name for c in found})
    if unknown:
        raise NLTError(f"{source}: no class named {', '.join(unknown)}")
    classes = [c for c in found if classes is None or c.name in classes]
    rng = np.random.default_rng(seed)
    names = [c.name for c in classes]
    available = [len(c.train) for c in classes]
    step = re.fullmatch(r"step-k(\d+)", profile)
    if step:
        k = int(step.group(1))
        n_tail = round(TAIL_CLASS_SHARE * len(classes))
        tail_idx = set(rng.choice(len(classes), size=n_tail, replace=False).tolist())
        sizes = [min(k, a) if i in tail_idx else a for i, a in enumerate(available)]
        head = [n for i, n in enumerate(names) if i not in tail_idx]
    elif profile == "pareto":
        if min(available) < MIN_CLASS_SIZE:
            raise NLTError(f"{source}: pareto needs at least {MIN_CLASS_SIZE} train images per class")
        sizes = pareto_sizes(available, rng.permutation(len(classes)))
        head = [n for n, s in zip(names, sizes) if s >= MIN_HEAD_SIZE]
    else:
        raise NLTError(f"profile '{profile}': use step-kK (e.g. step-k1, step-k4) or pareto")
    if not 0.0 <= noise < 1.0:
        raise NLTError(f"noise={noise}: must be in [0, 1)")
    plan = NLTPlan(profile, seed, noise, {}, {}, head=[n for n in names if n in head],
                   tail=[n for n in names if n not in head])
    for item, size in zip(classes, sizes):
        train = [_relative(s.path, source) for s in item.train]
        keep = sorted(rng.choice(len(train), size=size, replace=False).tolist())
        plan.train[item.name] = train
        plan.kept[item.name] = [train[i] for i in keep]
        if item.name not in plan.head or noise == 0:
            continue
        defects = [s for s in item.test if s.label == 1]
        count = min(int(round(noise * size)), len(defects) // 2)
        for i in sorted(rng.choice(len(defects), size=count, replace=False).tolist()):
            sample = defects[i]
            entry = f"{item.name}/train/{GOOD}/{sample.defect_type}_{sample.path.name}"
            plan.injected[entry] = _relative(sample.path, source)
    return plan


def _check_entry(entry: str, manifest: Path) -> PurePosixPath:
    problem = outside_root(entry, "dataset root")
    if problem:
        raise NLTError(f"{manifest}: {problem}")
    path = PurePosixPath(entry)
    if len(path.parts) != 4 or path.parts[1:3] != ("train", GOOD):
        raise NLTError(f"{manifest}: expected <class>/train/good/<file>: {entry}")
    return path


def _read_manifest(path: Path) -> list[str]:
    if not path.is_file():
        raise NLTError(f"{path}: manifest not found")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plan_from_manifests(source: str | os.PathLike, manifests: str | os.PathLike) -> NLTPlan:
    """Rebuild a plan from ``prune_good.txt`` and ``inject_defects.txt`` (reference format)."""
    source, manifests = Path(source), Path(manifests)
    classes = {c.name: c for c in load_mvtec(source)}
    train = {name: [_relative(s.path, source) for s in c.train] for name, c in classes.items()}
    pruned = set()
    for entry in _read_manifest(manifests / PRUNE_MANIFEST):
        path = _check_entry(entry, manifests / PRUNE_MANIFEST)
        if path.parts[0] not in train or entry not in train[path.parts[0]]:
            raise NLTError(f"{manifests / PRUNE_MANIFEST}: no such train image in {source}: {entry}")
        pruned.add(entry)
    injected = {}
    for entry in _read_manifest(manifests / INJECT_MANIFEST):
        path = _check_entry(entry, manifests / INJECT_MANIFEST)
        name, filename = path.parts[0], path.parts[3]
        if name not in classes:
            raise NLTError(f"{manifests / INJECT_MANIFEST}: unknown class '{name}': {entry}")
        types = sorted({s.defect_type for s in classes[name].test if s.label == 1}, key=len, reverse=True)
        defect = next((t for t in types if filename.startswith(f"{t}_")), None)
        source_file = f"{name}/test/{defect}/{filename[len(defect) + 1:]}" if defect else None
        if source_file is None or not (source / source_file).is_file():
            raise NLTError(f"{manifests / INJECT_MANIFEST}: no defect image in {source} for: {entry}")
        injected[entry] = source_file
    kept = {name: [p for p in files if p not in pruned] for name, files in train.items()}
    head = sorted({PurePosixPath(e).parts[0] for e in injected})
    return NLTPlan("manifests", None, None, train, kept, injected, head, [n for n in train if n not in head])


def build(source: str | os.PathLike, dest: str | os.PathLike, plan: NLTPlan, link: bool = True,
          keep_injected_in_test: bool = False, overwrite: bool = False) -> dict:
    """Materialise ``plan`` at ``dest``; returns the ``nlt.json`` document."""
    source, dest = Path(source).resolve(), Path(dest).absolute()
    problem = destination_problem(dest, source, overwrite)
    if problem:
        raise NLTError(problem)
    injected_sources = set(plan.injected.values())
    files: dict[str, str] = {}  # destination entry -> source entry
    for kept in plan.kept.values():
        files.update({p: p for p in kept})
    files.update(plan.injected)
    for item in load_mvtec(source):
        for sample in item.test:
            rel = _relative(sample.path, source)
            if rel in injected_sources and not keep_injected_in_test:
                continue
            files[rel] = rel
            if sample.mask_path is not None:
                files[_relative(sample.mask_path, source)] = _relative(sample.mask_path, source)
    for origin in files.values():
        path = source / origin
        if not path.is_file():
            raise NLTError(f"{path}: file listed in the plan does not exist")
        if not path.resolve().is_relative_to(source):
            raise NLTError(f"{path}: resolves outside the source through a symlink")

    with staged_directory(dest) as staging:
        for target, origin in sorted(files.items()):
            link_or_copy(source / origin, staging / target, link)
        (staging / PRUNE_MANIFEST).write_text("".join(f"{p}\n" for p in plan.pruned), encoding="utf-8")
        (staging / INJECT_MANIFEST).write_text("".join(f"{p}\n" for p in sorted(plan.injected)), encoding="utf-8")
        info = describe(plan, source, keep_injected_in_test)
        write_json(staging / "nlt.json", info)
    return info


def describe(plan: NLTPlan, source: Path, keep_injected_in_test: bool) -> dict:
    injected_per_class: dict[str, int] = {}
    for entry in plan.injected:
        injected_per_class[entry.split("/")[0]] = injected_per_class.get(entry.split("/")[0], 0) + 1
    return {
        "profile": plan.profile,
        "seed": plan.seed,
        "noise": plan.noise,
        "protocol": "leaky" if keep_injected_in_test else "clean",
        "injected_in_test": keep_injected_in_test,
        "source": str(source),
        "classes": {
            name: {
                "train_available": len(plan.train[name]),
                "kept": len(plan.kept[name]),
                "injected": injected_per_class.get(name, 0),
                "role": "head" if name in plan.head else "tail",
            }
            for name in plan.train
        },
        "head": plan.head,
        "tail": plan.tail,
        "injected_files": sorted(plan.injected),
        "injected_sources": [plan.injected[k] for k in sorted(plan.injected)],
    }
