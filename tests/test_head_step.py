"""benchmarks/head_step.py: the forced-miss stress test of TailedCore's head step."""

import numpy as np
import pytest

from tailedcore import TailedCore
from tailedcore.bench.nlt import build, plan_profile
from tailedcore.bench.synthetic import make_dataset
from tailedcore.data import as_paths
from tailedcore.policies import TailedCorePolicy
from tailedcore.tail import LinkageTailSampler, TailInputs

from .conftest import SMALL, benchmark_module


@pytest.fixture(scope="module")
def harness():
    with benchmark_module("head_step") as module:
        yield module


@pytest.fixture(scope="module")
def nlt_set(tmp_path_factory):
    source = make_dataset(tmp_path_factory.mktemp("head-src"), {"aa": 14, "bb": 12, "cc": 10, "dd": 9, "ee": 9},
                          test_good=1, test_defect=1, size=32, seed=4)
    dest = tmp_path_factory.mktemp("head") / "nlt"
    build(source, dest, plan_profile(source, "step-k1", noise=0.1, seed=0))
    return dest


def test_a_forced_miss_takes_exactly_the_true_tail_out_of_the_estimate(harness, nlt_set):
    info = harness.dataset_info(nlt_set)
    paths = as_paths(nlt_set)
    missed = harness.true_tail_indices(nlt_set, info)
    assert sorted(paths[i].relative_to(nlt_set).parts[0] for i in missed) == sorted(info["tail"])
    # Two tight groups of images far apart: the estimator finds the small one as tail.
    rng = np.random.default_rng(0)
    embeddings = np.concatenate([rng.normal(0, 0.01, (20, 8)) + np.eye(8)[0],
                                 rng.normal(0, 0.01, (3, 8)) + np.eye(8)[1]])
    inputs = TailInputs(embeddings, embeddings)
    assert LinkageTailSampler().estimate(inputs).tail_indices.tolist() == [20, 21, 22]
    forced = harness.MissedTail(missed=(21, 5)).estimate(inputs)
    assert forced.tail_indices.tolist() == [20, 22]


def test_a_fit_forced_to_miss_the_tail_keeps_it_out_of_the_memorys_tail(harness, nlt_set):
    """The forced miss reaches the fitted memory: the tail the policy keeps whole is the estimator's minus the
    true tail (the fit's own estimate, not the products' estimate made without the miss)."""
    missed = harness.true_tail_indices(nlt_set, harness.dataset_info(nlt_set))
    options = {**SMALL, "calibration_share": 0.0, "threads": 1}
    found = TailedCore(**options).fit(nlt_set).diagnostics_["tail_indices"]
    assert set(missed) & set(found.tolist())  # a true tail image found: the miss has something to take out
    policy = TailedCorePolicy(tail=harness.MissedTail(missed=missed))
    forced = TailedCore(**options, policy=policy).fit(nlt_set).diagnostics_["tail_indices"]
    assert forced.tolist() == np.setdiff1d(found, missed).tolist()


def test_the_table_gives_each_variant_against_patchcore(harness):
    info = {"classes": {"aa": {"role": "head", "kept": 30}, "bb": {"role": "tail", "kept": 1}},
            "head": ["aa"], "tail": ["bb"]}
    runs = {"patchcore": {"image_auroc": {"aa": 0.9, "bb": 0.8}, "lof_dropped_by_class": {}},
            "forced-miss": {"image_auroc": {"aa": 0.91, "bb": 0.5}, "lof_dropped_by_class": {"aa": 0.1, "bb": 0.6}}}
    header, rows = harness.table(runs, info)
    assert header == ["class", "role", "train", "PatchCore", "forced-miss"]
    assert rows[0] == ["aa", "head", "30", "90.0", "+1.0 (drop 10%)"]
    assert rows[1] == ["bb", "tail", "1", "80.0", "-30.0 (drop 60%)"]
    assert rows[2][-1] == "+1.0" and rows[3][-1] == "-30.0"


def test_dropped_injected_separates_the_injected_images_from_the_clean_ones_of_their_classes(harness, nlt_set):
    paths = as_paths(nlt_set)
    relative = [path.relative_to(nlt_set).as_posix() for path in paths]
    head = relative[0].split("/")[0]
    info = {"injected_files": [name for name in relative if name.startswith(head)][:2]}
    injected = np.isin(relative, info["injected_files"])
    dropped = np.where(injected, 0.5, 0.9)
    dropped[[i for i, name in enumerate(relative) if name.startswith(head) and not injected[i]]] = 0.1
    shares = harness.dropped_injected({"dropped_share": dropped}, paths, nlt_set, info)
    assert shares == pytest.approx({"injected": 0.5, "clean": 0.1})
    assert harness.dropped_injected({}, paths, nlt_set, info) == {}


def test_a_merged_miss_puts_each_true_tail_image_in_the_product_of_its_nearest_other_image(harness):
    rng = np.random.default_rng(1)
    embeddings = np.concatenate([rng.normal(0, 0.01, (20, 8)) + np.eye(8)[0],
                                 rng.normal(0, 0.01, (20, 8)) + np.eye(8)[1],
                                 rng.normal(0, 0.01, (2, 8)) + np.eye(8)[2] + 0.3 * np.eye(8)[1]])
    inputs = TailInputs(embeddings, embeddings)
    assert LinkageTailSampler().estimate(inputs).tail_indices.tolist() == [40, 41]
    merged = harness.MergedTail(merged=(40, 41))
    clusters = merged.clusters(inputs)
    assert clusters[40] == clusters[41] == clusters[20] != clusters[0]
    assert merged.estimate(inputs).tail_indices.tolist() == []
    assert harness.MergedTail().clusters(inputs).tolist() == LinkageTailSampler().clusters(inputs).tolist()


def test_merged_into_and_unlike_by_class_name_classes_from_the_training_paths(harness, tmp_path):
    paths = [tmp_path / name / "train" / "good" / f"{i}.png" for name, count in (("aa", 3), ("bb", 2), ("cc", 1))
             for i in range(count)]
    info = {"tail": ["cc"], "injected_files": ["aa/train/good/2.png"]}
    assert harness.merged_into(np.array([0, 0, 0, 1, 1, 0]), paths, tmp_path, info) == {"cc": ["aa"]}
    assert harness.merged_into(np.array([0, 0, 0, 1, 1, 2]), paths, tmp_path, info) == {"cc": ["cc"]}
    unlike = np.array([False, False, True, False, False, True])
    assert harness.unlike_by_class({"unlike": unlike}, paths, tmp_path, info) == {"aa": [1, 1], "cc": [1, 0]}
    assert harness.unlike_by_class({}, paths, tmp_path, info) == {}



def test_shares_by_class_gives_every_training_image_its_share_above_the_fence_found_and_merged(harness, nlt_set,
                                                                                               tmp_path):
    info = harness.dataset_info(nlt_set)
    classes = harness.class_names(as_paths(nlt_set), nlt_set)
    shares = {tail: harness.shares_by_class(nlt_set, info, tmp_path / "cache", tail, threads=1)
              for tail in ("found", "merged")}
    for found in shares.values():
        assert sorted(found) == sorted(set(classes))
        for name, entry in found.items():
            values = entry["clean"] + entry["injected"]
            assert entry["role"] == info["classes"][name]["role"] and len(values) == (classes == name).sum()
            assert all(0.0 <= v <= 1.0 for v in values) and entry["clean"] == sorted(entry["clean"], reverse=True)
    assert sum(len(entry["injected"]) for entry in shares["found"].values()) == len(info["injected_files"])


def test_the_shares_table_names_the_injected_images_above_each_share_and_the_merged_tails_range(harness):
    shares = {"found": {"aa": {"role": "head", "clean": [0.3, 0.1], "injected": [0.95, 0.6, 0.2]},
                        "bb": {"role": "tail", "clean": [0.0], "injected": []}},
              "merged": {"aa": {"role": "head", "clean": [0.3, 0.1], "injected": [0.95, 0.6, 0.2]},
                         "bb": {"role": "tail", "clean": [0.98, 0.7], "injected": []}}}
    header, rows = harness.shares_table(shares)
    assert len(header) == 6
    assert rows[0] == ["aa", "head", "0.30", "0.60 / 0.95", "2 / 1 of 3", "-"]
    assert rows[1] == ["bb", "tail", "0.00", "-", "-", "0.70 / 0.98"]
