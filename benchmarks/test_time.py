"""Test time: exact search against the sgemm bound, and exact vs approximate search end to end.

Part 1 (synthetic sizes, no data needed): the float32 matrix-product rate of
this machine, and the exact 1-NN search time per image (784 queries) for a
memory of --memory rows x 1024 dims, against the bound queries x memory x
dims x 2 / rate.

Part 2 (real images): fit one model on DATA (an NLT set from make-nlt, or any
MVTec-layout root), then predict its whole test split with each search /
precision / runtime setting (runtimes other than torch run the model's export,
written to a temporary folder; settings ending in "-product" search each image's
patches in its product's memory only, routing.py): images per second of prediction end to end
(decode, backbone, search, maps; metrics not timed) and mean image / pixel
AUROC, with the difference to the first setting (exact float32); then where the
time goes for the fastest setting within 0.3 points of the first on both. With several
--features (settings of features_study.py) the whole of part 2 runs for each in turn, side by side.

    python benchmarks/test_time.py --data runs/step-k1/seed-1/data --method patchcore
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import median_time, print_table
from features_study import SETTINGS as FEATURES
from features_study import detector_arguments

from tailedcore.data import load_mvtec
from tailedcore.evaluation import evaluate
from tailedcore.methods import METHODS
from tailedcore.runtimes import export
from tailedcore.scoring import ExactSearch, anomaly_maps

# name -> (search, search options, feature precision, runtime of the test-time features)
SETTINGS = {
    "exact": ("exact", {}, "float32", "torch"),
    "ivf-8": ("ivf", {"nprobe": 8}, "float32", "torch"),
    "ivf-16": ("ivf", {"nprobe": 16}, "float32", "torch"),
    "ivf-16-bf16": ("ivf", {"nprobe": 16}, "bfloat16", "torch"),
    "hnsw-64": ("hnsw", {"ef_search": 64}, "float32", "torch"),
    "exact-bf16": ("exact", {}, "bfloat16", "torch"),
    "ivf-8-bf16": ("ivf", {"nprobe": 8}, "bfloat16", "torch"),
    "hnsw-64-bf16": ("hnsw", {"ef_search": 64}, "bfloat16", "torch"),
    "exact-onnx": ("exact", {}, "float32", "onnx"),
    "ivf-16-onnx": ("ivf", {"nprobe": 16}, "float32", "onnx"),
    "ivf-8-onnx": ("ivf", {"nprobe": 8}, "float32", "onnx"),
    "ivf-4-onnx": ("ivf", {"nprobe": 4}, "float32", "onnx"),
    "hnsw-64-onnx": ("hnsw", {"ef_search": 64}, "float32", "onnx"),
    "ivf-16-openvino": ("ivf", {"nprobe": 16}, "float32", "openvino"),
    "ivf-8-openvino": ("ivf", {"nprobe": 8}, "float32", "openvino"),
    "ivf-batched-16-onnx": ("ivf-batched", {"nprobe": 16}, "float32", "onnx"),
    "ivf-batched-8-onnx": ("ivf-batched", {"nprobe": 8}, "float32", "onnx"),
    "ivf-batched-4-onnx": ("ivf-batched", {"nprobe": 4}, "float32", "onnx"),
    "ivf-batched-8-openvino": ("ivf-batched", {"nprobe": 8}, "float32", "openvino"),
    "ivf-batched-8-openvino-bf16": ("ivf-batched", {"nprobe": 8}, "bfloat16", "openvino"),
    "ivf-batched-8-onnx-int8": ("ivf-batched", {"nprobe": 8}, "int8", "onnx"),
    "ivf-batched-8-bf16": ("ivf-batched", {"nprobe": 8}, "bfloat16", "torch"),
    "ivf-batched-16-rerank2-onnx": ("ivf-batched", {"nprobe": 16, "rerank": 2}, "float32", "onnx"),
    "ivf-batched-12-rerank2-onnx": ("ivf-batched", {"nprobe": 12, "rerank": 2}, "float32", "onnx"),
    "ivf-batched-8-rerank2-onnx": ("ivf-batched", {"nprobe": 8, "rerank": 2}, "float32", "onnx"),
    "ivf-batched-16-rerank2-openvino": ("ivf-batched", {"nprobe": 16, "rerank": 2}, "float32", "openvino"),
    "ivf-batched-16-rerank2-openvino-bf16": ("ivf-batched", {"nprobe": 16, "rerank": 2}, "bfloat16", "openvino"),
    "ivf-batched-16-rerank2-onnx-int8": ("ivf-batched", {"nprobe": 16, "rerank": 2}, "int8", "onnx"),
    # lists and candidates ranked on the memory's leading principal axes, the best candidates rescored in full
    "ivf-batched-16-rerank4-pca256-onnx": ("ivf-batched", {"nprobe": 16, "rerank": 4, "ranking_dim": 256}, "float32",
                                           "onnx"),
    "ivf-batched-16-rerank8-pca128-onnx": ("ivf-batched", {"nprobe": 16, "rerank": 8, "ranking_dim": 128}, "float32",
                                           "onnx"),
    "ivf-batched-8-rerank4-pca256-onnx": ("ivf-batched", {"nprobe": 8, "rerank": 4, "ranking_dim": 256}, "float32",
                                          "onnx"),
    # half as many lists (2 sqrt(M)), each twice as long: nprobe 8 scans as many rows as nprobe 16 of 4 sqrt(M)
    "ivf-batched-8-lists2-rerank4-pca256-onnx": ("ivf-batched", {"nprobe": 8, "nlist_factor": 2, "rerank": 4,
                                                                 "ranking_dim": 256}, "float32", "onnx"),
    "ivf-batched-12-lists2-rerank4-pca256-onnx": ("ivf-batched", {"nprobe": 12, "nlist_factor": 2, "rerank": 4,
                                                                  "ranking_dim": 256}, "float32", "onnx"),
}
# The same settings with each image searched in its product's memory (Detector search_scope "product").
PRODUCT_SCOPE = "-product"
SETTINGS |= {name + PRODUCT_SCOPE: SETTINGS[name] for name in (
    "exact", "exact-onnx", "ivf-batched-16-rerank2-onnx", "ivf-batched-8-rerank2-onnx", "ivf-batched-4-onnx",
    "ivf-batched-8-onnx", "ivf-batched-16-rerank4-pca256-onnx", "ivf-batched-8-rerank4-pca256-onnx",
    "ivf-batched-8-lists2-rerank4-pca256-onnx", "ivf-batched-12-lists2-rerank4-pca256-onnx")}
BOUND = 0.3  # points of image and pixel AUROC from the first setting (exact search)


def sgemm_rate(size: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(size, 1024), torch.randn(1024, size)
    seconds, _ = median_time(lambda: a @ b, repeats)
    return 2 * size * 1024 * size / seconds


def exact_bound(memory_rows: int, images: int = 8, repeats: int = 3) -> list:
    rng = np.random.default_rng(0)
    memory = rng.standard_normal((memory_rows, 1024), dtype=np.float32)
    queries = rng.standard_normal((784 * images, 1024), dtype=np.float32)
    index = ExactSearch(memory)
    rate = sgemm_rate()
    seconds, _ = median_time(lambda: index.search(queries, 1), repeats)
    bound = 784 * images * memory_rows * 1024 * 2 / rate
    return [f"{memory_rows:,}", f"{rate / 1e9:.0f}", f"{1000 * bound / images:.0f}", f"{1000 * seconds / images:.0f}",
            f"{seconds / bound:.2f}"]


def apply(detector, name: str, exports: dict) -> None:
    """Set ``detector`` to the setting ``name`` (search, precision, runtime, search scope)."""
    search, options, precision, runtime = SETTINGS[name]
    detector.export_folder_ = exports.get(runtime)
    detector.set_params(search=search, search_options=options, precision=precision, runtime=runtime,
                        search_scope="product" if name.endswith(PRODUCT_SCOPE) else "global")


def time_breakdown(detector, paths: list[Path]) -> list[list[str]]:
    """Where prediction time goes, each step run on its own over ``paths`` in batches: ms per image.
    (In ``predict`` decoding runs in a thread beside the rest, so the steps add up to more.)"""
    extractor, scorer = detector.extractor, detector.scorer
    seconds = dict.fromkeys(["decode and resize", "features", "search", "anomaly maps"], 0.0)
    for start in range(0, len(paths), detector.batch_size):
        clock = time.perf_counter()
        batch = extractor.standardise(extractor.load(paths[start : start + detector.batch_size]))
        seconds["decode and resize"] += time.perf_counter() - clock
        clock = time.perf_counter()
        patches = extractor.features(batch).patches
        seconds["features"] += time.perf_counter() - clock
        clock = time.perf_counter()
        scores = scorer.score(patches).reshape(-1, *extractor.grid_shape)
        seconds["search"] += time.perf_counter() - clock
        clock = time.perf_counter()
        anomaly_maps(scores, detector.crop, detector.blur_sigma)
        seconds["anomaly maps"] += time.perf_counter() - clock
    total = sum(seconds.values())
    return [[step, f"{1000 * value / len(paths):.1f}", f"{100 * value / total:.0f}%"]
            for step, value in seconds.items()]


class TimedPredict:
    """Wraps ``detector.predict`` and adds up the seconds spent in it."""

    def __init__(self, detector) -> None:
        self.predict, self.seconds = detector.predict, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.predict(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory", nargs="+", type=int, default=[50_000, 200_000])
    parser.add_argument("--data", help="dataset for part 2 (skipped without)")
    parser.add_argument("--method", default="patchcore")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--features", nargs="+", default=["lite0-224"], choices=list(FEATURES),
                        help="feature settings of benchmarks/features_study.py, each fitted and measured in turn")
    parser.add_argument("--exact-coreset-rows", type=int,
                        help="fit with the composable coreset over shards of this many rows (a faster fit; the "
                             "memory keeps the same share of rows); default: the exact coreset")
    args = parser.parse_args()

    print("Exact search vs the sgemm bound (784 queries per image, 1024 dims)")
    print_table(["memory rows", "sgemm GFLOP/s", "bound ms/image", "exact ms/image", "ratio"],
                [exact_bound(rows) for rows in args.memory])
    if not args.data:
        return
    for feature in args.features:
        detector = METHODS[args.method](calibration_share=0.0, batch_size=args.batch_size, progress=False,
                                        **detector_arguments(feature))
        if args.exact_coreset_rows:
            detector.set_params(policy__coreset__exact_rows=args.exact_coreset_rows)
        measure(detector, args, f"{feature}: " if len(args.features) > 1 else "")


def measure(detector, args, label: str) -> None:
    """Fit ``detector`` on args.data, then time and score the test split with each of args.settings."""
    started = time.perf_counter()
    detector.fit(args.data)
    print(f"\n{label}{args.method} fitted on {args.data} in {time.perf_counter() - started:.0f} s; "
          f"memory {len(detector.memory_):,} features")
    classes = load_mvtec(args.data)
    test_paths = [sample.path for item in classes for sample in item.test]
    rows, reference, within = [], None, {}
    scratch = tempfile.TemporaryDirectory()
    int8 = any(SETTINGS[name][2] == "int8" for name in args.settings)
    # int8 activation ranges from up to 4 training images per class (fixed draw)
    draw = np.random.default_rng(0)
    calibration = [item.train[i].path for item in classes for i in draw.permutation(len(item.train))[:4]]
    exports = {fmt: export(detector, Path(scratch.name) / fmt, fmt,
                           int8_calibration=calibration if int8 and fmt == "onnx" else ())
               for fmt in {SETTINGS[name][3] for name in args.settings} - {"torch"}}
    header = ["setting", "index build s", "images/s", "I-AUROC", "vs first", "P-AUROC", "vs first", "within 0.3"]
    for name in args.settings:
        apply(detector, name, exports)
        started = time.perf_counter()
        detector.build_index()  # timed apart from prediction
        build_seconds = time.perf_counter() - started
        detector.predict = timed = TimedPredict(detector)
        mean = evaluate(detector, args.data).mean
        seconds = timed.seconds
        del detector.predict
        if reference is None:
            reference = mean
        row = [label + name, f"{build_seconds:.1f}", f"{len(test_paths) / seconds:.1f}"]
        differences = []
        for metric in ("image_auroc", "pixel_auroc"):
            if mean[metric] is None:  # no masks
                row += ["-", "-"]
                continue
            differences.append(100 * (mean[metric] - reference[metric]))
            row += [f"{100 * mean[metric]:.2f}", f"{differences[-1]:+.2f}"]
        row.append("yes" if max(map(abs, differences)) <= BOUND else "no")
        if row[-1] == "yes":
            within[name] = len(test_paths) / seconds
        rows.append(row)
        print_table(header, rows[-1:])
    print()
    print_table(header, rows)
    if within:
        best = max(within, key=within.get)
        apply(detector, best, exports)
        print(f"\nWhere the time goes: {label}{best}, the fastest setting within {BOUND} points "
              f"({within[best]:.1f} images/s end to end), each step alone over the {len(test_paths)} test images")
        print_table(["step", "ms/image", "share"], time_breakdown(detector, test_paths))


if __name__ == "__main__":
    main()
