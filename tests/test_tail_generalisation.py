"""benchmarks/tail_generalisation.py: the leave-classes-out protocol of the tail estimators."""

import json
import sys

import numpy as np
import pytest

from tailedcore.bench.synthetic import make_dataset

from .conftest import benchmark_module


@pytest.fixture(scope="module")
def harness():
    with benchmark_module("tail_generalisation") as module:
        yield module


def test_splits_leave_each_class_out_once_then_distinct_random_sets(harness):
    classes = list("abcdefgh")
    splits = harness.splits(classes, leave_out=3, random_splits=10, seed=0)
    assert splits[:8] == [[name] for name in classes]
    drawn = [tuple(split) for split in splits[8:]]
    assert len(drawn) == len(set(drawn)) == 10 and all(len(split) == 3 for split in drawn)
    assert splits == harness.splits(classes, 3, 10, 0)


def test_the_choice_follows_the_targets(harness):
    design = {
        "loose": {"recall": 1.0, "precision": 0.8, "injected_in_tail": 0.0, "worst_recall": 1.0},
        "tight": {"recall": 0.9, "precision": 1.0, "injected_in_tail": 0.0, "worst_recall": 0.5},
        "tight, better worst": {"recall": 0.9, "precision": 0.95, "injected_in_tail": 0.01, "worst_recall": 0.7},
        "noisy": {"recall": 0.95, "precision": 0.85, "injected_in_tail": 0.05, "worst_recall": 1.0},
    }
    assert harness.choose(design) == "tight, better worst"  # meets the targets; ties on recall, better worst
    design["tight, as precise"] = {**design["tight, better worst"], "precision": 0.99}
    assert harness.choose(design) == "tight, as precise"  # then the better precision
    del design["tight"], design["tight, better worst"], design["tight, as precise"]
    assert harness.choose(design) == "loose"  # none meets them: the best recall + precision - injected


def test_figures_of_the_unseen_classes_count_their_images_only(harness):
    mix = harness.Mix("m", np.arange(6), np.array(["a", "a", "b", "c", "c", "c"]),
                      np.array([False, False, False, False, False, True]), {"a", "b"})
    result = harness.figures(mix, np.array([0, 5]), unseen=["b", "c"])
    assert result["recall"] == pytest.approx(1 / 3) and result["precision"] == 0.5 and result["injected_in_tail"] == 1.0
    assert result["unseen_recall"] == 0.0 and result["unseen_injected"] == 1.0
    assert "unseen_recall" not in harness.figures(mix, np.array([0]), unseen=["c"])


def test_a_whole_run_on_a_small_set(harness, tmp_path, monkeypatch):
    source = make_dataset(tmp_path / "src", {"aa": 24, "bb": 22, "cc": 21, "dd": 20}, test_good=1, test_defect=6,
                          size=32, seed=3)
    monkeypatch.setattr(sys.modules["tail_quality"], "CACHE", tmp_path / "cache")
    out = tmp_path / "generalisation.json"
    monkeypatch.setattr(sys, "argv", ["tail_generalisation.py", str(source), "--profiles", "step-k1", "--seeds", "0",
                                      "--noise", "0.2", "--random-splits", "1", "--leave-out", "2",
                                      "--families", "linkage, cut chosen", "--json", str(out)])
    harness.main()
    report = json.loads(out.read_text())
    runs = report["splits"]["linkage, cut chosen"]
    assert [run["unseen"] for run in runs[:4]] == [["aa"], ["bb"], ["cc"], ["dd"]] and len(runs) == 5
    for run in runs:
        assert run["chosen"].startswith("linkage:distance=")
        assert 0.0 <= run["all_classes"]["recall"] <= 1.0 and len(run["mixes"]) == 1
    assert sum(report["summary"]["linkage, cut chosen"]["chosen"].values()) == 5
