"""scripts/results_tables.py: the set-by-set comparison of the noisy long-tail grid."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "results_tables.py"


def _script():
    spec = importlib.util.spec_from_file_location("results_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def method(all_auroc, head_auroc, per_class):
    return {"mean": {"all": {"image_auroc": all_auroc}, "head": {"image_auroc": head_auroc}},
            "classes": {name: {"image_auroc": value} for name, value in per_class.items()}}


def test_lead_over_the_best_baseline_and_the_worst_class_against_patchcore():
    seeds = {0: {"dataset": {"head": ["a"]}, "methods": {
        "patchcore": method(0.80, 0.90, {"a": 0.90, "b": 0.70}),
        "softpatch": method(0.75, 0.92, {"a": 0.92, "b": 0.58}),
        "tailedcore": method(0.83, 0.91, {"a": 0.87, "b": 0.79}),
    }}}
    (row,) = _script().set_rows(seeds)
    # all: 83 against PatchCore's 80; head: 91 against SoftPatch's 92; worst class a: 87 - 90
    assert row == [0, "a", "80.0", "75.0", "83.0", "-", "-", "+3.0", "-1.0", "a -3.0"]


def test_a_set_without_the_default_or_the_baselines_has_no_lead():
    seeds = {1: {"dataset": {"head": ["a", "b"]}, "methods": {
        "tailedcore (paper head step)": method(0.84, 0.85, {"a": 0.84}),
        "patchcore": method(0.80, 0.90, {"a": 0.80}),
    }}}
    (row,) = _script().set_rows(seeds)
    assert row == [1, "a, b", "80.0", "-", "-", "84.0", "-", "-", "-", "-"]


def test_class_gaps_carry_each_class_role():
    seeds = {0: {"dataset": {"head": ["a"], "classes": {"a": {"role": "head"}, "b": {"role": "tail"}}}, "methods": {
        "patchcore": method(0.80, 0.90, {"a": 0.90, "b": 0.70}),
        "tailedcore": method(0.83, 0.91, {"a": 0.87, "b": 0.79}),
    }}}
    assert _script().class_gap_rows(seeds, ["a", "b", "c"]) == [[0, "h -3.0", "t +9.0", "-"]]
