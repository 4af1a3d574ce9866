"""Fit wall time, peak RSS and peak disk use as the training set grows (1x, 2x, 4x the real-ad training images).

The set is grown with flipped copies (2x: + horizontal flips, 4x: + vertical and both flips),
written once under benchmarks/.cache. Each fit runs in its own process under /usr/bin/time -v,
so the peak RSS is that of the whole command; its feature files go to a folder of their own
(TMPDIR), whose size is sampled every second for the peak disk use. The per-stage table of each
fit is kept in the JSON results.

    python benchmarks/fit_memory.py --scales 1 2 4 --method softpatch --coreset-ratio 0.01 \
        --exact-coreset-rows 50000 --json docs/fit_memory.json --resume
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import CACHE, REAL_AD, print_table
from PIL import Image, ImageOps

from tailedcore.data import training_images

FLIPS = [None, ImageOps.mirror, ImageOps.flip, lambda image: ImageOps.flip(ImageOps.mirror(image))]
COLUMNS = ["method", "scale", "images", "patches", "fit min", "peak RSS GiB", "model file GiB", "peak disk GiB"]


def grown_set(scale: int) -> Path:
    """A folder with the real-ad training images and scale - 1 flipped copies of each."""
    folder = CACHE / f"train-x{scale}"
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(training_images(REAL_AD)):
        for copy, flip in enumerate(FLIPS[:scale]):
            target = folder / f"{index:05d}_{copy}.png"
            if flip is None:
                target.unlink(missing_ok=True)
                target.hardlink_to(path) if path.suffix == ".png" else Image.open(path).save(target)
            else:
                flip(Image.open(path).convert("RGB")).save(target)
    marker.touch()
    return folder


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while walking
                pass
    return total


def run_fit(command: list[str], work: Path) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run ``command`` with TMPDIR=work -> (result, wall seconds, peak bytes in ``work``)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            peak[0] = max(peak[0], folder_bytes(work))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(work)})
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    shutil.rmtree(work, ignore_errors=True)
    if result.returncode:
        raise SystemExit(f"fit failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    return result, seconds, peak[0]


def row(entry: dict) -> list[str]:
    return [entry["method"], f"{entry['scale']}x", f"{entry['images']:,}", f"{entry['patches']:,}",
            f"{entry['seconds'] / 60:.1f}", f"{entry['peak_rss_bytes'] / 2**30:.2f}",
            f"{entry['model_bytes'] / 2**30:.2f}", f"{entry['peak_disk_bytes'] / 2**30:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 2, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--method", default="softpatch")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--exact-coreset-rows", type=int, default=None,
                        help="composable coreset over shards of this many rows (default: exact)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="results file: one entry per method and scale")
    parser.add_argument("--resume", action="store_true", help="keep the entries already in --json")
    args = parser.parse_args()
    entries = json.loads(args.json.read_text()) if args.resume and args.json and args.json.is_file() else []
    for scale in args.scales:
        settings = {"method": args.method, "scale": scale, "coreset_ratio": args.coreset_ratio,
                    "exact_coreset_rows": args.exact_coreset_rows, "threads": args.threads}
        if any(all(entry.get(k) == v for k, v in settings.items()) for entry in entries):
            continue
        data = grown_set(scale)
        images = len(list(data.glob("*.png")))
        model = CACHE / f"model-x{scale}-{args.method}.safetensors"
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "tailedcore", "--quiet", "fit", str(data),
                   "--threads", str(args.threads), "--method", args.method, "--coreset-ratio",
                   str(args.coreset_ratio), "--calibration-share", "0", "--out", str(model), "--stage-times"]
        if args.exact_coreset_rows is not None:
            command += ["--exact-coreset-rows", str(args.exact_coreset_rows)]
        result, seconds, peak_disk = run_fit(command, CACHE / f"work-x{scale}")
        peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
        entry = {**settings, "images": images, "patches": images * 784, "seconds": round(seconds, 1),
                 "peak_rss_bytes": peak_kib * 1024, "model_bytes": model.stat().st_size,
                 "peak_disk_bytes": peak_disk, "stage_times": result.stdout}
        model.unlink()
        print(result.stdout)
        print_table(COLUMNS, [row(entry)])
        entries.append(entry)
        if args.json:
            args.json.write_text(json.dumps(entries, indent=1) + "\n")
    print()
    print_table(COLUMNS, [row(entry) for entry in entries])


if __name__ == "__main__":
    main()
