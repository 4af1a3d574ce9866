"""Greedy coreset: the straightforward loop vs tailedcore's exact fast path, on real projected patches.

For each N (rows sampled from the real-ad training patches, 128-d) both pick
10% of N from the same start. The straightforward loop makes one full pass
per pick, so its time per pick is constant: it is timed on the first
``--reference-picks`` picks (all picks where N <= --full-reference-below) and
its total is that per-pick time x the number of picks. The fast path runs in
full; its first picks are compared with the loop's.

    python benchmarks/coreset.py [--sizes 100000 300000 700000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import median_time, print_table, projected_training_rows

from tailedcore.sampling import greedy_coreset, greedy_coreset_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 300_000, 700_000])
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fast path (median)")
    parser.add_argument("--reference-picks", type=int, default=1000)
    parser.add_argument("--full-reference-below", type=int, default=150_000)
    args = parser.parse_args()

    rows = projected_training_rows()
    rng = np.random.default_rng(0)
    table = []
    for size in args.sizes:
        x = rows[np.sort(rng.choice(len(rows), size=size, replace=False))]
        n = int(size * args.ratio)
        fast_seconds, fast_picks = median_time(lambda x=x, n=n: greedy_coreset(x, n, start=0), args.repeats)
        reference_n = n if size <= args.full_reference_below else min(n, args.reference_picks)
        started = time.perf_counter()
        reference_picks = greedy_coreset_reference(x, reference_n, start=0)
        reference_seconds = (time.perf_counter() - started) / reference_n * n
        identical = bool(np.array_equal(fast_picks[:reference_n], reference_picks))
        table.append([f"{size:,}", f"{n:,}", f"{reference_seconds:,.0f}" + ("" if reference_n == n else " (est.)"),
                      f"{fast_seconds:,.1f}", f"{reference_seconds / fast_seconds:,.0f}x",
                      f"{'yes' if identical else 'NO'} ({reference_n:,} picks)"])
        print_table(["N", "picks", "loop s", "ours s (median)", "speed-up", "picks identical"], table[-1:])
    print()
    print_table(["N", "picks", "loop s", "ours s (median)", "speed-up", "picks identical"], table)


if __name__ == "__main__":
    main()
