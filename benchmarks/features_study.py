"""Feature study, clean protocol: which backbone, stages and input size see the defects best.

For each setting and each class of DATA: PatchCore fitted on every train/good image of that class
alone (no noise, calibration_share 0), the class's whole test split scored with exact search;
image AUROC, pixel AUROC and AUPRO where masks exist, fit and test time per image and peak RSS.
Each (setting, class) runs in a child process (a clean peak RSS) and is kept as soon as it ends, so
``--resume`` continues a stopped study. The settings of every row are in the JSON, so one row is
rerun by ``--settings NAME --classes CLASS``.

    python benchmarks/features_study.py --threads 1 --json docs/features_study.json --resume
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import REAL_AD

# name -> Detector keyword arguments that differ from the defaults.
SETTINGS = {
    "lite0-224": {"backbone": "efficientnet-lite0", "resize": 256, "crop": 224},
    "lite1-224": {"backbone": "efficientnet-lite1", "resize": 256, "crop": 224},
    "lite2-224": {"backbone": "efficientnet-lite2", "resize": 256, "crop": 224},
    "lite0-288": {"backbone": "efficientnet-lite0", "resize": 320, "crop": 288},
    "lite1-288": {"backbone": "efficientnet-lite1", "resize": 320, "crop": 288},
    "lite2-288": {"backbone": "efficientnet-lite2", "resize": 320, "crop": 288},
    "lite0-224-s4-8": {"backbone": "efficientnet-lite0", "resize": 256, "crop": 224, "stages": [4, 8]},
    "lite0-224-s16-32": {"backbone": "efficientnet-lite0", "resize": 256, "crop": 224, "stages": [16, 32]},
    "lite0-224-s4-8-16": {"backbone": "efficientnet-lite0", "resize": 256, "crop": 224, "stages": [4, 8, 16]},
    "lite0-224-s8-16-32": {"backbone": "efficientnet-lite0", "resize": 256, "crop": 224, "stages": [8, 16, 32]},
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def detector_arguments(setting: str) -> dict:
    """The Detector keyword arguments of a setting (its stages as the tuple the detector takes)."""
    return {key: tuple(value) if key == "stages" else value for key, value in SETTINGS[setting].items()}


def run_one(setting: str, name: str, data: Path, threads: int) -> dict:
    """Fit and evaluate one class with one setting in this process; the row as a dict."""
    import faiss
    import torch

    from tailedcore import PatchCore
    from tailedcore.data import load_mvtec
    from tailedcore.evaluation import evaluate

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    item = next(c for c in load_mvtec(data) if c.name == name)
    params = {"calibration_share": 0.0, "progress": False, "search": "exact", **SETTINGS[setting]}
    detector = PatchCore(**{**params, **detector_arguments(setting)})
    started = time.perf_counter()
    detector.fit([sample.path for sample in item.train])
    fit_seconds = time.perf_counter() - started
    result = evaluate(detector, data, classes=[name]).classes[name]
    test_seconds = sum(seconds for stage, seconds, _ in detector.stage_times_.table()
                       if stage in ("test features", "test scoring"))
    return {
        "setting": setting, "class": name, "params": params,
        **{metric: result.metrics.get(metric) for metric in METRICS},
        "train_images": len(item.train), "test_images": len(result.samples),
        "memory_rows": int(detector.memory_.features.shape[0]),
        "fit_seconds_per_image": fit_seconds / len(item.train),
        "test_seconds_per_image": test_seconds / len(result.samples),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL_AD)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--classes", nargs="+", default=None, help="default: every class of DATA")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("docs/features_study.json"))
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --json")
    parser.add_argument("--one", nargs=2, metavar=("SETTING", "CLASS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.data, args.threads)))
        return

    classes = args.classes or sorted(p.name for p in args.data.iterdir() if (p / "train" / "good").is_dir())
    study = {"rows": []}
    if args.resume and args.json.is_file():
        study = json.loads(args.json.read_text())
    elif args.json.is_file():
        sys.exit(f"{args.json}: already exists (use --resume to continue it)")
    done = {(row["setting"], row["class"]) for row in study["rows"]}
    study["classes"] = classes
    study["environment"] = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "threads": args.threads, "machine": platform.machine()}
    for setting in args.settings:
        for name in classes:
            if (setting, name) in done:
                continue
            command = [sys.executable, __file__, "--one", setting, name, "--data", str(args.data),
                       "--threads", str(args.threads)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row = json.loads(output.strip().splitlines()[-1])
            study["rows"].append(row)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(study, indent=1) + "\n")
            print(f"{setting} {name}: image AUROC {row['image_auroc']:.4f}, "
                  f"fit {row['fit_seconds_per_image']:.2f} s/img, test {row['test_seconds_per_image']:.3f} s/img, "
                  f"peak {row['peak_rss_mib']:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
