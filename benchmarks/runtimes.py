"""Test-time feature throughput per runtime: torch (float32, bfloat16) vs the exported graph run by
ONNX Runtime and OpenVINO (float32), at the default 224 px input, and their agreement with torch.

Exports an unfitted PatchCore's features (the graph does not depend on the memory bank) to a
temporary folder and times ``FeatureExtractor.features`` on a fixed random batch per runtime
(median of ``--repeats``), with ``--threads`` torch / runtime threads.

    python benchmarks/runtimes.py --batch 16 --repeats 5 --json docs/runtimes.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import median_time, print_table

from tailedcore import PatchCore
from tailedcore.memory import MemoryBank
from tailedcore.runtimes import GraphFeatures, export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = PatchCore(progress=False)
    detector.memory_, detector.thresholds_, detector.training_summary_ = MemoryBank(np.zeros((1, 1024))), None, {}
    extractor = detector.extractor
    fast = PatchCore(progress=False, precision="bfloat16").extractor
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32))
    reference = extractor.features(x).patches
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        graphs = {fmt: GraphFeatures(export(detector, Path(scratch) / fmt, fmt), fmt) for fmt in ("onnx", "openvino")}
        settings = [("torch float32", extractor.features), ("torch bfloat16 backbone", fast.features),
                    *((f"{fmt} float32", graph) for fmt, graph in graphs.items())]
        for name, function in settings:
            seconds, out = median_time(lambda f=function: f(x), args.repeats)
            patches = out.patches if hasattr(out, "patches") else out
            error = float(np.abs(patches - reference).max() / np.abs(reference).max())
            rows.append({"runtime": name, "images_per_second": args.batch / seconds, "max_relative_difference": error})
    print(f"batch {args.batch} x 224 px, {args.threads} threads")
    print_table(["runtime", "features images/s", "max |diff| / max |torch|"],
                [[r["runtime"], f"{r['images_per_second']:.1f}", f"{r['max_relative_difference']:.1e}"] for r in rows])
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "threads": args.threads, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
