"""The benchmark runner: fit each method once on the merged training set, evaluate per class, report.

``run_benchmark(data, ...)`` works on any MVTec-layout root; with an NLT
destination (``nlt.json``) it also reports head/tail means and, for
TailedCore, how well TailSampler and the LOF step did against the known
ground truth (which images are tail, which were injected defects).
``run_seeds`` builds one NLT set per seed and summarises mean +- std.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._io import atomic_write_text, read_json, write_json
from ..data import load_mvtec
from ..evaluation import ClassResult, evaluate_samples
from ..methods import METHODS
from ..metrics import METRIC_NAMES, mean_metrics
from ..report.benchmark_pages import GROUPS, summary_markdown, write_results
from ..report.html import page
from .nlt import build, plan_profile

log = logging.getLogger(__name__)


def dataset_info(data: Path) -> dict:
    """``nlt.json`` of an NLT destination, or a description of a plain root (every class 'head')."""
    info_path = data / "nlt.json"
    if info_path.is_file():
        return read_json(info_path)
    classes = load_mvtec(data)
    return {"profile": None, "protocol": None, "classes": {c.name: {"kept": len(c.train), "injected": 0,
                                                                  "role": "head"} for c in classes},
            "head": [c.name for c in classes], "tail": [], "injected_files": []}


def group_means(per_class: dict[str, dict], info: dict) -> dict[str, dict]:
    return {
        "all": mean_metrics(per_class),
        "head": mean_metrics({k: v for k, v in per_class.items() if k in info["head"]}),
        "tail": mean_metrics({k: v for k, v in per_class.items() if k in info["tail"]}),
    }


def tail_diagnostics(diagnostics: dict, training_paths: list[Path], data: Path, info: dict) -> dict:
    """How TailSampler and LOF did against the NLT ground truth (``diagnostics`` of a fit)."""
    relative = [p.resolve().relative_to(data.resolve()).as_posix() for p in training_paths]
    classes = np.array([r.split("/")[0] for r in relative])
    injected = np.isin(relative, info.get("injected_files", []))
    result: dict = {}
    if "dropped_share" in diagnostics:
        dropped = diagnostics["dropped_share"]
        result["lof_dropped_share_injected"] = float(dropped[injected].mean()) if injected.any() else None
        result["lof_dropped_share_clean"] = float(dropped[~injected].mean()) if (~injected).any() else None
    if "class_sizes" in diagnostics:
        sizes = diagnostics["class_sizes"]
        predicted_tail = np.zeros(len(relative), dtype=bool)
        predicted_tail[diagnostics["tail_indices"]] = True
        true_tail = np.isin(classes, info["tail"])
        hits = int((predicted_tail & true_tail).sum())
        result.update(
            max_k=int(diagnostics["max_k"]),
            group_sizes=[int(g) for g in diagnostics["groups"]],
            predicted_tail_images=int(predicted_tail.sum()),
            true_tail_images=int(true_tail.sum()),
            tail_recall=hits / int(true_tail.sum()) if true_tail.any() else None,
            tail_precision=hits / int(predicted_tail.sum()) if predicted_tail.any() else None,
            injected_in_tail=int((predicted_tail & injected).sum()),
            injected_total=int(injected.sum()),
            class_sizes={
                name: {
                    "true": int((classes == name).sum()),
                    "estimated_median": float(np.median(sizes[classes == name])),
                    "estimated_mean": float(np.mean(sizes[classes == name])),
                    "predicted_tail": int((predicted_tail & (classes == name)).sum()),
                }
                for name in sorted(set(classes))
            },
            per_image=[{"class": c, "true_size": int((classes == c).sum()), "estimated_size": int(s)}
                       for c, s in zip(classes, sizes)],
        )
    return result


def run_environment() -> dict:
    """What produced a result: versions, torch threads and CPU, so a figure can be traced and rerun alike."""
    return {"tailedcore": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine()}


@dataclass
class MethodRun:
    """One method fitted on a set and evaluated per class; ``to_json`` gives its results.json entry."""

    method: str
    classes: dict[str, ClassResult]
    diagnostics: dict
    params: dict

    def to_json(self, info: dict) -> dict:
        per_class = {name: result.metrics for name, result in self.classes.items()}
        return {"classes": per_class, "mean": group_means(per_class, info), "diagnostics": self.diagnostics,
                "params": self.params}


def run_method(method: str, data: Path, info: dict, search: str, options: dict, progress: bool,
               policy_params: dict) -> MethodRun:
    """Fit ``method`` on every training image of ``data`` and evaluate each class with a test split."""
    detector = METHODS[method](search=search, progress=progress, **options).set_params(**policy_params)
    started = time.perf_counter()
    detector.fit(data)
    fit_seconds = time.perf_counter() - started
    classes = {item.name: evaluate_samples(detector, item.name, item.test, item.has_masks)
               for item in load_mvtec(data) if item.test}
    diagnostics = {
        **tail_diagnostics(detector.diagnostics_, detector.training_paths_, data, info),
        "memory_size": len(detector.memory_),
        "memory_info": detector.memory_.info,
        "fit_seconds": fit_seconds,
        "total_seconds": time.perf_counter() - started,
        "stages": [{"stage": r[0], "seconds": r[1], "peak_rss_mib": r[2]} for r in detector.stage_times_.table()],
    }
    params = {k: v for k, v in detector.params_config().items() if k != "run"}
    return MethodRun(method, classes, diagnostics, params)


def collect(info: dict, runs: list[MethodRun]) -> dict:
    """The results.json document of the runs on one set."""
    return {"dataset": info, "environment": run_environment(), "methods": {run.method: run.to_json(info)
                                                                            for run in runs}}


def run_benchmark(data: str | os.PathLike, out: str | os.PathLike, methods: list[str], search: str = "exact",
                  options: dict | None = None, progress: bool = True,
                  method_options: dict[str, dict] | None = None) -> dict:
    """Run each method on ``data``, collect, and write results.json/.csv/.md and report.html in ``out``.

    ``options`` go to every detector, ``method_options[method]`` (nested policy parameters,
    e.g. ``policy__lof__k``) to that one only.
    """
    data, out = Path(data), Path(out)
    info = dataset_info(data)
    options = {"calibration_share": 0.0, **(options or {})}  # the paper's protocol: train on every image
    runs = [run_method(method, data, info, search, options, progress, (method_options or {}).get(method, {}))
            for method in methods]
    results = collect(info, runs)
    write_results(results, out, {run.method: run.classes for run in runs})
    return results


def summarise_seeds(per_seed: dict[int, dict]) -> dict:
    """Mean and std over seeds of each method's group means (all, head, tail), with the seed count n."""
    summary: dict = {"seeds": sorted(per_seed), "methods": {}}
    methods = next(iter(per_seed.values()))["methods"].keys()
    for method in methods:
        entry: dict = {"mean": {}}
        for group in GROUPS:
            entry["mean"][group] = {}
            for metric in METRIC_NAMES:
                values = [r["methods"][method]["mean"][group][metric] for r in per_seed.values()]
                values = [v for v in values if v is not None]
                entry["mean"][group][metric] = {"mean": float(np.mean(values)) if values else None,
                                                "std": float(np.std(values)) if values else None, "n": len(values)}
        summary["methods"][method] = entry
    return summary


def _finished(path: Path, methods: list[str]) -> dict | None:
    """The results in ``path`` restricted to ``methods``, or None when the file is missing or lacks one."""
    if not path.is_file():
        return None
    results = read_json(path)
    if not set(methods) <= set(results.get("methods", {})):
        return None
    return {**results, "methods": {m: results["methods"][m] for m in methods}}


def _check_same_set(info: dict, wanted: dict, path: Path) -> None:
    """Refuse to reuse a set (or its results) built with other NLT settings than ``wanted``."""
    differing = [f"{key} {info.get(key)!r} (asked {value!r})"
                 for key, value in wanted.items() if info.get(key) != value]
    if differing:
        raise ValueError(f"{path}: built with other settings: {', '.join(differing)}; choose another --out")


def run_seeds(source: str | os.PathLike, out: str | os.PathLike, methods: list[str], profile: str, noise: float,
              seeds: list[int], search: str = "exact", options: dict | None = None, progress: bool = True,
              keep_injected_in_test: bool = False, method_options: dict[str, dict] | None = None,
              resume: bool = False) -> dict:
    """One NLT set per seed (built under out/seed-N/data), a benchmark each, then summary.json/.md.

    A set already built under out/seed-N/data is reused when its ``nlt.json``
    has the same profile, seed, noise and protocol (otherwise: an error). With
    ``resume``, a seed whose results.json already holds every requested method
    (on a set of the same settings) is read back instead of run again.
    """
    out = Path(out)
    per_seed = {}
    for seed in seeds:
        folder = out / f"seed-{seed}"
        data = folder / "data"
        wanted = {"profile": profile, "seed": seed, "noise": noise, "injected_in_test": keep_injected_in_test}
        finished = _finished(folder / "results.json", methods) if resume else None
        if finished is not None:
            _check_same_set(finished["dataset"], wanted, folder / "results.json")
            log.info("seed %d: reusing %s", seed, folder / "results.json")
            per_seed[seed] = finished
            continue
        if (data / "nlt.json").is_file():
            _check_same_set(dataset_info(data), wanted, data / "nlt.json")
        else:
            build(source, data, plan_profile(source, profile, noise, seed), keep_injected_in_test=keep_injected_in_test)
        per_seed[seed] = run_benchmark(data, folder, methods, search, options, progress, method_options)
    summary = summarise_seeds(per_seed)
    summary["profile"] = profile
    summary["noise"] = noise
    write_json(out / "summary.json", summary)
    text = summary_markdown(summary, profile)
    atomic_write_text(out / "summary.md", text)
    body = "".join(f'<p><a href="seed-{s}/report.html">seed {s} report</a></p>' for s in seeds)
    atomic_write_text(out / "summary.html", page(f"tailedcore benchmark: {profile}", f"<pre>{text}</pre>{body}"))
    return summary
