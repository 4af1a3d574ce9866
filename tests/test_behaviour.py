"""Behaviour lock: each method fitted on a fixed small real set gives the memory bank and test scores
recorded before the package was reshaped into strategy objects (bitwise)."""

import hashlib

import numpy as np
import pytest

from tailedcore import PatchCore, SoftPatch, TailedCore
from tailedcore.policies import TailedCorePolicy
from tailedcore.tail import PaperTailSampler

from .conftest import real_subset

# Training images per class (a head, a middle and a one-image tail) and test images per class.
TRAIN = {"bottle": 10, "pcb": 4, "screw": 1}
TEST = 2
PARAMS = {"resize": 72, "crop": 64, "progress": False, "batch_size": 8, "calibration_share": 0.0}

# SHA-256 (first 16 hex digits) of (memory features, memory weights) and of (image scores, patch scores).
RECORDED = {
    "patchcore": ("f4243f9f62a20e4f", "c7e6c81cb8cef1c5"),
    "softpatch": ("1e883421f0f9c77f", "eb0f1b8abae93006"),
    "tailedcore": ("199ab3ec37b6fcd6", "fb1b96152bf09b75"),
    "tailedcore-paper": ("7fa1b1dcc9b71e97", "1116fb79d5f82441"),
}


def _digest(*arrays) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        if array is not None:
            sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:16]


@pytest.fixture(scope="module")
def real_images():
    return real_subset(TRAIN, TEST)


@pytest.mark.parametrize("name, cls, params", [
    ("patchcore", PatchCore, {}),
    ("softpatch", SoftPatch, {}),
    ("tailedcore", TailedCore, {}),
    ("tailedcore-paper", TailedCore, {"policy": TailedCorePolicy(tail=PaperTailSampler())}),
])
def test_memory_and_scores_are_bitwise_as_recorded(real_images, name, cls, params):
    train, test = real_images
    detector = cls(**PARAMS, **params).fit(train)
    predictions = detector.predict(test)
    got = (_digest(detector.memory_.features, detector.memory_.weights),
           _digest(predictions.image_scores, predictions.patch_scores))
    assert got == RECORDED[name]
    if cls is TailedCore:  # the one screw image is tail: the lock covers the tail stages too
        assert len(train) - 1 in detector.diagnostics_["tail_indices"]
