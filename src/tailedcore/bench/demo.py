"""The demo: a small noisy long-tail set, three methods, one table, heatmaps.

From an MVTec-layout root: the larger half of the classes are head classes
(``head_train`` train images each, plus defective test images amounting to
``noise`` of that injected as noise), the rest tail classes (``tail_train``
images each). Injected images are removed from the test split; the test split
is subsampled to ``test_per_label`` normal and anomalous images per class.

The defaults are reduced so that all three methods run in a few minutes on a
2-core CPU: input 160 -> 144 px (an 18 x 18 patch grid instead of 28 x 28)
and small classes. Every method step is the full one (tail estimator, 47 views
per tail image, LOF, 10% greedy coreset, exact nearest-neighbour search).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import atomic_write_text, markdown_table, write_json
from ..data import Sample, load_mvtec
from ..evaluation import Evaluation, evaluate_samples
from ..methods import METHODS
from ..metrics import METRIC_NAMES
from ..report.writers import stage_table, write_evaluation, write_examples
from .benchmark import group_means
from .synthetic import make_dataset


@dataclass
class DemoSplit:
    train: list[Path]
    test: dict[str, list[Sample]]
    has_masks: dict[str, bool]
    head: list[str]
    tail: list[str]
    injected: list[Path]


def demo_split(root: str | os.PathLike, head_train: int = 24, tail_train: int = 3, noise: float = 0.1,
               test_per_label: int = 12, seed: int = 0) -> DemoSplit:
    rng = np.random.default_rng(seed)
    classes = sorted(load_mvtec(root), key=lambda c: (-len(c.train), c.name))
    n_head = (len(classes) + 1) // 2
    split = DemoSplit([], {}, {}, [c.name for c in classes[:n_head]], [c.name for c in classes[n_head:]], [])
    for rank, item in enumerate(classes):
        keep = head_train if rank < n_head else tail_train
        chosen = rng.choice(len(item.train), size=min(keep, len(item.train)), replace=False)
        split.train += [item.train[i].path for i in sorted(chosen)]
        good = [s for s in item.test if s.label == 0]
        bad = [s for s in item.test if s.label == 1]
        n_noise = int(round(noise * len(chosen))) if rank < n_head else 0
        bad_order = rng.permutation(len(bad))
        injected = [bad[i] for i in bad_order[: min(n_noise, max(0, len(bad) - 1))]]
        remaining_bad = [bad[i] for i in sorted(bad_order[len(injected) :])]
        split.injected += [s.path for s in injected]
        pick_good = sorted(rng.permutation(len(good))[:test_per_label])
        pick_bad = sorted(rng.permutation(len(remaining_bad))[:test_per_label])
        split.test[item.name] = [good[i] for i in pick_good] + [remaining_bad[i] for i in pick_bad]
        split.has_masks[item.name] = item.has_masks
    split.train += split.injected
    return split


def run_demo(data: str | os.PathLike | None, out: str | os.PathLike, methods: tuple[str, ...] = tuple(METHODS),
             resize: int = 160, crop: int = 144, head_train: int = 24, tail_train: int = 3,
             test_per_label: int = 12, seed: int = 0, progress: bool = True) -> str:
    """Fit each method on the demo split, evaluate, write tables and heatmaps; return the summary text."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="tailedcore-demo-") as scratch:
        if data is None or not Path(data).is_dir():
            source = "procedurally generated textures (no real images found)"
            data = make_dataset(Path(scratch) / "synthetic", {"stripes": 60, "checker": 40, "dots": 3, "grain": 2},
                                test_good=10, test_defect=10, seed=seed)
        else:
            source = str(data)
        split = demo_split(data, head_train, tail_train, test_per_label=test_per_label, seed=seed)
        lines = [
            f"Data: {source}",
            f"Train: {len(split.train)} images in one unlabeled set (head classes {', '.join(split.head)}; "
            f"tail classes {', '.join(split.tail)}; {len(split.injected)} defective images injected as noise)",
            f"Test: {sum(len(v) for v in split.test.values())} images; input {resize} -> {crop} px",
            "",
        ]
        summary_rows = []
        results = {}
        for method in methods:
            started = time.perf_counter()
            detector = METHODS[method](resize=resize, crop=crop, seed=seed, progress=progress, calibration_share=0.0)
            detector.fit(split.train)
            fit_seconds = time.perf_counter() - started
            classes = {name: evaluate_samples(detector, name, samples, split.has_masks[name])
                       for name, samples in split.test.items()}
            evaluation = Evaluation(method, classes, detector.thresholds_)
            total_seconds = time.perf_counter() - started
            table = write_evaluation(evaluation, out / method)
            write_examples(evaluation, out / method / "heatmaps")
            lines += [f"## {method}  (fit {fit_seconds:.0f} s, fit + test {total_seconds:.0f} s, "
                      f"memory bank {len(detector.memory_)} features)", ""]
            if "tail_indices" in detector.diagnostics_:
                tail_images = detector.diagnostics_["tail_indices"]
                tail_names = sorted({detector.training_paths_[i].parts[-4] for i in tail_images})
                lines += [f"Tail ({detector.policy.tail.name} estimator): {len(tail_images)} tail images "
                          f"(max K = {detector.diagnostics_['max_k']}), from {', '.join(tail_names) or 'no class'}", ""]
            lines += [table, stage_table(detector.stage_times_.table())]
            groups = group_means({c: r.metrics for c, r in classes.items()}, {"head": split.head, "tail": split.tail})
            summary_rows.append([method, *(groups["all"][m] for m in METRIC_NAMES), groups["head"]["image_auroc"],
                                 groups["tail"]["image_auroc"]])
            results[method] = {"metrics": evaluation.metrics_json(), "fit_seconds": fit_seconds,
                               "total_seconds": total_seconds, "memory_size": len(detector.memory_)}
        header = ["method", *METRIC_NAMES, "head image_auroc", "tail image_auroc"]
        lines += ["## Summary (means over classes, %)", "", markdown_table(header, summary_rows)]
        text = "\n".join(lines)
        atomic_write_text(out / "summary.md", text)
        write_json(out / "summary.json", {"data": source, "head": split.head, "tail": split.tail,
                                          "train_images": len(split.train), "injected": split.injected,
                                          "methods": results})
    return text
