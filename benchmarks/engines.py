"""Local vs Ray engine: wall time and peak memory of one fit, and whether the models are equal.

Fits a method on the first ``--images`` training images of each real-ad class (its exact
coreset below ``--exact-rows`` rows, composable above) with ``--engine local`` and with a local
Ray cluster of 1 and of 2 workers; reports wall time, the driver's peak RSS, the largest peak RSS
of a Ray worker, and whether the memory bank is bitwise that of the local engine.

    python benchmarks/engines.py --method softpatch --images 20 --json docs/engines.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from common import REAL_AD, print_table

from tailedcore import METHODS


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fit(method: str, paths: list[Path], engine: str, exact_rows: int):
    detector = METHODS[method](progress=False, calibration_share=0.0, engine=engine)
    detector.set_params(policy__coreset__exact_rows=exact_rows)
    started = time.perf_counter()
    detector.fit(paths)
    return detector, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="softpatch", choices=sorted(METHODS))
    parser.add_argument("--images", type=int, default=20, help="training images per class")
    parser.add_argument("--exact-rows", type=int, default=50_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import ray

    paths = [p for folder in sorted(REAL_AD.iterdir()) if (folder / "train" / "good").is_dir()
             for p in sorted((folder / "train" / "good").iterdir())[: args.images]]
    local, seconds = fit(args.method, paths, "local", args.exact_rows)
    rows = [{"engine": "local", "workers": 1, "seconds": seconds, "driver_peak_rss_mib": peak_rss_mib(),
             "worker_peak_rss_mib": None, "same_memory": True}]
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        remote, seconds = fit(args.method, paths, "ray", args.exact_rows)
        worker_rss = ray.get([ray.remote(peak_rss_mib).remote() for _ in range(4 * workers)])
        same = bool(np.array_equal(remote.memory_.features, local.memory_.features))
        rows.append({"engine": "ray", "workers": workers, "seconds": seconds,
                     "driver_peak_rss_mib": peak_rss_mib(), "worker_peak_rss_mib": max(worker_rss),
                     "same_memory": same})
        ray.shutdown()
    summary = {"method": args.method, "images": len(paths), "memory": len(local.memory_), "runs": rows}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    print_table(["engine", "workers", "fit s", "driver peak RSS MiB", "worker peak RSS MiB", "same memory bank"],
                [[r["engine"], r["workers"], f"{r['seconds']:.0f}", f"{r['driver_peak_rss_mib']:.0f}",
                  "" if r["worker_peak_rss_mib"] is None else f"{r['worker_peak_rss_mib']:.0f}", r["same_memory"]]
                 for r in rows])


if __name__ == "__main__":
    main()
