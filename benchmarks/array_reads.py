"""Indexed reads of an on-disk patch store: how far apart wanted rows may be and still be read in one call.

store.ArrayFile reads the rows at given indices as spans: rows closer than
GAP_BYTES are read in one call together with the rows between them. 0 reads
each run of consecutive rows on its own (one call per picked row when the picks
are sparse); a gap as large as a read block reads whole blocks, as the patch
store did before it was an ArrayFile. Timed on the reads a fit makes: the
memory gather (coreset picks, sorted, 4,096 at a time), and whole images (the
calibration hold-out).

    python benchmarks/array_reads.py --rows 300000 --out docs/array_reads.json

Page cache: the file is read once before timing, so the figures are for a file
the system holds in RAM (a fit reads the store it has just written); a cold disk
favours small gaps even more, since every gap byte is then read from the disk.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import print_table

from tailedcore import store as store_module
from tailedcore.bench.benchmark import run_environment
from tailedcore.store import ArrayFile

GATHER_BLOCK = 4096  # rows per read of the memory gather (policies._GATHER_ROWS)


def write_store(path: Path, rows: int, dim: int, seed: int) -> ArrayFile:
    store = ArrayFile(path, (dim,))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 8192):
        store.append(rng.standard_normal((min(8192, rows - start), dim), dtype=np.float32))
    return store


def timed_reads(store: ArrayFile, batches: list[np.ndarray], repeats: int) -> float:
    """Best wall time (s) of reading every batch of indices."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            store[batch]
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the store (1,024 float32 each)")
    parser.add_argument("--share", type=float, default=0.1, help="share of rows the gather picks (the coreset)")
    parser.add_argument("--gaps-kib", type=int, nargs="+", default=[0, 16, 64, 256, 1024, 65536])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    picks = np.sort(rng.choice(args.rows, int(args.share * args.rows), replace=False))
    gather = [picks[start : start + GATHER_BLOCK] for start in range(0, len(picks), GATHER_BLOCK)]
    images = [np.arange(start, start + 784) for start in rng.integers(0, args.rows // 784, 50) * 784]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        store = write_store(Path(folder) / "patches.f32", args.rows, 1024, 0)
        store[:]  # into the page cache
        for gap in args.gaps_kib:
            store_module.GAP_BYTES = gap * 1024
            results.append({"gap_kib": gap, "gather_seconds": timed_reads(store, gather, args.repeats),
                            "images_seconds": timed_reads(store, images, args.repeats)})
        store.close()
    header = ["gap (KiB)", f"memory gather ({len(picks)} rows) s", "50 whole images s"]
    print_table(header, [[str(r["gap_kib"]), f"{r['gather_seconds']:.3f}", f"{r['images_seconds']:.4f}"]
                         for r in results])
    if args.out:
        args.out.write_text(json.dumps({"rows": args.rows, "dim": 1024, "picked": len(picks), "results": results,
                                        "environment": run_environment(),
                                        "command": "python benchmarks/array_reads.py --rows ROWS --out OUT"},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
