"""benchmarks/tail_views.py: which memory patches score a test image, per memory of a one-image product."""

import numpy as np
import pytest
import torch

from .conftest import benchmark_module


@pytest.fixture(scope="module")
def views_bench():
    with benchmark_module("tail_views") as module:
        yield module


def test_a_view_counts_only_in_the_memories_that_hold_it(views_bench):
    # One test image of two patches; the memory image matches the first patch, its second view the other.
    tests = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]])
    memory = torch.tensor([[[0.0, 0.0]], [[0.0, 5.0]], [[3.0, 0.0]]])  # image, view 1, view 2
    per_view = views_bench.nearest_per_view(tests, memory)
    assert per_view.shape == (1, 2, 3)
    assert torch.allclose(per_view[0], torch.tensor([[0.0, 25.0, 9.0], [9.0, 34.0, 0.0]]))
    transforms = [(0.0, True), (90.0, False)]  # view 1 is the flipped copy, view 2 a rotation
    members = views_bench.memberships(transforms, np.array([0.0, 0.1, 0.5]), cut=0.3)
    assert {name: mask.tolist() for name, mask in members.items()} == {
        "image alone": [True, False, False], "47 views (paper)": [True, True, True],
        "flipped copy": [True, True, False], "views within the cut": [True, True, False]}
    scores = {name: views_bench.image_scores(per_view, mask)[0] for name, mask in members.items()}
    assert scores == {"image alone": 9.0, "47 views (paper)": 0.0, "flipped copy": 9.0,
                      "views within the cut": 9.0}
