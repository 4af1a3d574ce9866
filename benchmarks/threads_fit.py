"""Wall time of one TailedCore fit (55 real images: 40 bottle, 15 screw) at a thread count.

Run it on an idle machine and beside another process that holds a core, with and without
OMP_WAIT_POLICY=ACTIVE (tailedcore sets PASSIVE unless told otherwise):

    python benchmarks/threads_fit.py --threads 2
    OMP_WAIT_POLICY=ACTIVE python benchmarks/threads_fit.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

from common import REAL_AD

from tailedcore import TailedCore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="default: the detector's default")
    args = parser.parse_args()
    paths = (sorted((REAL_AD / "bottle" / "train" / "good").iterdir())[:40]
             + sorted((REAL_AD / "screw" / "train" / "good").iterdir())[:15])
    started = time.perf_counter()
    TailedCore(progress=False, calibration_share=0.0, threads=args.threads).fit(paths)
    print(f"threads {args.threads}, OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']}: "
          f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
