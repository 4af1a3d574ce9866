"""Shared helpers for the benchmark scripts: the real data, cached projected features, timing."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from tailedcore import PatchCore
from tailedcore.data import training_images
from tailedcore.sampling import random_projection

REAL_AD = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ad"
CACHE = Path(__file__).resolve().parent / ".cache"


def projected_training_rows() -> np.ndarray:
    """(rows, 128) float32: every training patch of real-ad through the detector's projection (seed 0).

    Computed once (about 2 minutes) and cached under benchmarks/.cache.
    """
    path = CACHE / "real_ad_projected.npy"
    if path.is_file():
        return np.load(path)
    extractor = PatchCore(progress=True).extractor  # the detector's default feature settings
    projection = random_projection(extractor.feature_dim, 128, seed=0)
    chunks = [batch.patches.reshape(-1, extractor.feature_dim) @ projection
              for _, batch in extractor.iter_batches(training_images(REAL_AD))]
    rows = np.concatenate(chunks).astype(np.float32)
    CACHE.mkdir(exist_ok=True)
    np.save(path, rows)
    return rows


def median_time(function, repeats: int) -> tuple[float, object]:
    """Median wall time in seconds over ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def print_table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
