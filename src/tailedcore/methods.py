"""The three methods as detectors, and loading a saved one.

A method is its default memory-bank policy (policies.py); everything else is
the shared ``Detector`` (detector.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from .detector import Detector
from .model_file import read_stored
from .policies import PatchCorePolicy, SoftPatchPolicy, TailedCorePolicy
from .runtimes import is_export, verify_export


class PatchCore(Detector):
    """PatchCore: memory = greedy coreset of all training patches (policies.PatchCorePolicy)."""

    default_policy = PatchCorePolicy


class SoftPatch(Detector):
    """SoftPatch: patch-wise LOF denoising, coreset, LOF-weighted scores (policies.SoftPatchPolicy)."""

    default_policy = SoftPatchPolicy


class TailedCore(Detector):
    """TailedCore: tail images kept whole with rotated/flipped views; LOF-denoised rest
    (policies.TailedCorePolicy; the tail estimator defaults to linkage, the paper's is PaperTailSampler)."""

    default_policy = TailedCorePolicy


METHODS: dict[str, type[Detector]] = {cls.default_policy.method: cls for cls in (PatchCore, SoftPatch, TailedCore)}


def load(path: str | os.PathLike, **overrides) -> Detector:
    """Load a saved model, or an export folder (its graph then computes the test-time features, unless
    ``runtime="torch"``); ``overrides`` replace run-time parameters by name, flat or nested (e.g.
    ``search="ivf"``, ``batch_size=4``, ``run__engine="ray"``), never whole parameter objects."""
    objects = sorted(set(overrides) & set(Detector.GROUPS))
    if any(not isinstance(overrides[name], str) for name in objects):
        raise ValueError(f"load: give the parameters of {', '.join(objects)} by name (e.g. features__batch_size=4), "
                         "not as whole objects: a fitted model keeps its own")
    if is_export(path):
        info = verify_export(path)
        # The graph runs in float32 unless asked otherwise, whatever arithmetic the fit used.
        detector = load(Path(path) / info["model"], **{"runtime": info["format"], "precision": "float32", **overrides})
        detector.export_folder_ = Path(path)
        return detector
    stored = read_stored(path)
    detector = METHODS[stored.method](**stored.params)
    try:
        detector.set_params(**overrides)
    except ValueError as error:
        raise ValueError(f"{stored.method}: {error}") from None
    detector.memory_, detector.products_ = stored.memory, stored.products
    detector.thresholds_, detector.product_thresholds_ = stored.thresholds, stored.product_thresholds
    detector.training_summary_ = stored.training_summary
    detector.check_params()  # overrides included
    return detector
