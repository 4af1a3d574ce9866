"""Exact vs composable greedy coreset (``Coreset(exact_rows=...)``) on real projected patch rows.

For N rows of real-ad's training patches (through the detector's 128-d projection), times the
exact 10% greedy coreset and the composable one (``sampling.two_round_coreset`` over shards of
``--exact-rows`` consecutive rows, blocks of at most as many picks) and reports the k-center
covering radius of each (largest distance of a row to its nearest pick; computed on a
20,000-row sample) and their ratio. Raw results go to ``--json``.

    python benchmarks/composable_coreset.py --rows 100000 200000 400000 --exact-up-to 400000 \\
        --exact-rows 50000 --json docs/composable_coreset.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import print_table, projected_training_rows

from tailedcore.policies import Coreset
from tailedcore.timing import StageTimer

RATIO = 0.1


def covering_radius(rows: np.ndarray, picks: np.ndarray, sample: np.ndarray) -> float:
    """Largest distance from a sampled row to its nearest pick."""
    x, centres = torch.from_numpy(rows[sample]), torch.from_numpy(rows[picks])
    return float(torch.cat([torch.cdist(block, centres).amin(dim=1) for block in x.split(1024)]).max())


def timed(coreset: Coreset, rows: np.ndarray) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    picks = coreset.select(rows, np.random.default_rng(0), StageTimer())
    return time.perf_counter() - started, picks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 200_000, 400_000])
    parser.add_argument("--exact-up-to", type=int, default=400_000, help="largest N the exact coreset runs on")
    parser.add_argument("--exact-rows", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    all_rows = projected_training_rows()
    results = []
    for n in args.rows:
        rows = all_rows[np.random.default_rng(1).permutation(len(all_rows))[:n]] if n < len(all_rows) else all_rows
        rows = np.ascontiguousarray(rows)
        sample = np.random.default_rng(2).choice(len(rows), size=min(20_000, len(rows)), replace=False)
        entry = {"rows": len(rows), "exact_rows": args.exact_rows, "threads": args.threads}
        seconds, picks = timed(Coreset(RATIO, exact_rows=args.exact_rows), rows)
        entry.update(composable_seconds=seconds, composable_picks=len(picks),
                     composable_radius=covering_radius(rows, picks, sample))
        if n <= args.exact_up_to:
            seconds, picks = timed(Coreset(RATIO), rows)
            entry.update(exact_seconds=seconds, exact_picks=len(picks),
                         exact_radius=covering_radius(rows, picks, sample))
            entry["radius_ratio"] = entry["composable_radius"] / entry["exact_radius"]
        results.append(entry)
        print(json.dumps(entry), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    print_table(["rows", "exact s", "composable s", "exact radius", "composable radius", "ratio"],
                [[r["rows"], f"{r.get('exact_seconds', float('nan')):.1f}", f"{r['composable_seconds']:.1f}",
                  f"{r.get('exact_radius', float('nan')):.3f}", f"{r['composable_radius']:.3f}",
                  f"{r.get('radius_ratio', float('nan')):.3f}"] for r in results])


if __name__ == "__main__":
    main()
