"""benchmarks/tail_rotations.py: the classes' labels and the evidence threshold chosen leave-one-class-out."""

import pytest

from .conftest import benchmark_module


@pytest.fixture(scope="module")
def rotations_bench():
    with benchmark_module("tail_rotations") as module:
        yield module


def test_views_are_labelled_by_the_sign_of_every_gain(rotations_bench):
    assert rotations_bench.view_label([0.2, 0.1]) == "helps"
    assert rotations_bench.view_label([-0.02, -0.01]) == "costs"
    assert rotations_bench.view_label([0.03, -0.01]) == "mixed"


def test_the_threshold_misjudges_fewest_draws_and_sits_in_the_widest_gap(rotations_bench):
    assert rotations_bench.best_threshold([0.5, 0.6, 0.9], [0.97, 1.0]) == pytest.approx(0.935)
    # One overlap: 0.96 (helped) above 0.95 (cost); either side misjudges one draw, the wider gap wins.
    assert rotations_bench.best_threshold([0.5, 0.96], [0.95, 1.0, 1.0]) == pytest.approx(0.725)
    assert rotations_bench.best_threshold([0.5], []) > 0.5 and rotations_bench.best_threshold([], [0.9]) <= 0.9


def test_the_threshold_of_a_class_is_chosen_on_the_others_only(rotations_bench):
    evidence = {"a": [0.5, 0.6], "b": [0.9], "c": [0.99, 1.0], "d": [0.97], "e": [0.3]}
    labels = {"a": "helps", "b": "helps", "c": "costs", "d": "costs", "e": "mixed"}
    chosen = rotations_bench.left_out_thresholds(evidence, labels)
    assert chosen["a"] == pytest.approx((0.9 + 0.97) / 2)
    assert chosen["b"] == pytest.approx((0.6 + 0.97) / 2)
    assert chosen["d"] == pytest.approx((0.9 + 0.99) / 2)
    assert chosen["e"] == pytest.approx((0.9 + 0.97) / 2)  # a mixed class chooses nothing
