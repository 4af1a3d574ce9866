"""Fit wall time and peak RSS as the training set grows (1x, 2x, 4x the real-ad training images).

The set is grown with flipped copies (2x: + horizontal flips, 4x: + vertical and both flips),
written once under benchmarks/.cache. Each fit runs in its own process under /usr/bin/time -v,
so the peak RSS is that of the whole command, and prints its per-stage table.

    python benchmarks/fit_memory.py --scales 1 2 4 --method softpatch --coreset-ratio 0.01
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from common import CACHE, REAL_AD, print_table
from PIL import Image, ImageOps

from tailedcore.data import training_images

FLIPS = [None, ImageOps.mirror, ImageOps.flip, lambda image: ImageOps.flip(ImageOps.mirror(image))]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 2, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--method", default="softpatch")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    args = parser.parse_args()
    rows = []
    for scale in args.scales:
        data = grown_set(scale)
        images = len(list(data.glob("*.png")))
        model = CACHE / f"model-x{scale}.safetensors"
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "tailedcore", "--quiet", "fit", str(data),
                   "--method", args.method, "--coreset-ratio", str(args.coreset_ratio), "--calibration-share", "0",
                   "--out", str(model), "--stage-times"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
        peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
        rows.append([f"{scale}x", f"{images:,}", f"{images * 784:,}", f"{seconds / 60:.1f}", f"{peak_kib / 2**20:.2f}"])
        print(result.stdout)
        print_table(["scale", "images", "patches", "fit min", "peak RSS GiB"], rows[-1:])
        model.unlink(missing_ok=True)
    print()
    print_table(["scale", "images", "patches", "fit min", "peak RSS GiB"], rows)


if __name__ == "__main__":
    main()
