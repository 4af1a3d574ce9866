"""Joint vs two-round tail coreset: time and covering radius as the tail grows.

A tail image brings 48 x 784 patch rows (the image and its 47 views). This stands in real
projected patch rows of real-ad (48 consecutive training images per tail image) and times the
paper's joint 10% greedy coreset against ``sampling.two_round_coreset`` (one shard per tail
image), and reports the k-center covering radius of each (largest distance of a row to its
nearest pick; computed on a 20,000-row sample).

    python benchmarks/tail_coreset.py --images 1 2 4 8 16 --joint-up-to 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import print_table, projected_training_rows

from tailedcore.sampling import greedy_coreset, two_round_coreset

ROWS_PER_TAIL_IMAGE = 48 * 784
RATIO = 0.1


def covering_radius(rows: np.ndarray, picks: np.ndarray, sample: np.ndarray) -> float:
    """Largest distance from a sampled row to its nearest pick."""
    x, centres = torch.from_numpy(rows[sample]), torch.from_numpy(rows[picks])
    nearest = torch.cat([torch.cdist(block, centres).amin(dim=1) for block in x.split(2048)])
    return float(nearest.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--joint-up-to", type=int, default=8, help="largest tail (images) timed with the joint one")
    args = parser.parse_args()
    all_rows = projected_training_rows()
    table = []
    for images in args.images:
        rows = np.ascontiguousarray(all_rows[: images * ROWS_PER_TAIL_IMAGE])
        shards = [np.arange(i * ROWS_PER_TAIL_IMAGE, (i + 1) * ROWS_PER_TAIL_IMAGE) for i in range(images)]
        sample = np.random.default_rng(1).choice(len(rows), size=min(20000, len(rows)), replace=False)
        started = time.perf_counter()
        two_round = two_round_coreset(rows, shards, RATIO, np.random.default_rng(0))
        two_round_seconds = time.perf_counter() - started
        row = [images, f"{len(rows):,}", f"{two_round_seconds:.1f}", f"{covering_radius(rows, two_round, sample):.3f}"]
        if images <= args.joint_up_to:
            started = time.perf_counter()
            joint = greedy_coreset(rows, int(RATIO * len(rows)), start=0)
            row += [f"{time.perf_counter() - started:.1f}", f"{covering_radius(rows, joint, sample):.3f}"]
        else:
            row += ["", ""]
        table.append(row)
        print_table(["tail images", "rows", "two-round s", "two-round radius", "joint s", "joint radius"], table[-1:])
    print()
    print_table(["tail images", "rows", "two-round s", "two-round radius", "joint s", "joint radius"], table)


if __name__ == "__main__":
    main()
