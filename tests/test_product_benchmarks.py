"""The product benchmarks' own arithmetic: threshold rules from held-out scores, the leave-one-class-out
choice of the unknown factor."""

import numpy as np
import pytest

from .conftest import benchmark_module


@pytest.fixture(scope="module")
def thresholds_bench():
    with benchmark_module("product_thresholds") as module:
        yield module


@pytest.fixture(scope="module")
def unknown_bench():
    with benchmark_module("unknown_product") as module:
        yield module


def test_threshold_rules_from_held_out_scores(thresholds_bench):
    rng = np.random.default_rng(0)
    clean = rng.lognormal(10.0, 0.1, 99)
    held_out = [{"product": 0, "raw": float(s), "injected": False} for s in clean]
    held_out.append({"product": 0, "raw": 1e6, "injected": True})  # one defect among the held-out images
    images = [{"class": "a", "product": 0, "label": 0, "raw": float(s)} for s in rng.lognormal(10.0, 0.1, 50)]
    images += [{"class": "a", "product": 0, "label": 1, "raw": 3e4}]
    result = {"calibration": held_out, "images": images, "product_thresholds": {"0": {}}}
    rows = thresholds_bench.threshold_rules(result)
    by_rule = {row[3]: row for row in rows}
    assert by_rule["quantile"][2] == "100 (1 injected)"
    quantile = np.quantile([h["raw"] for h in held_out], 0.99)
    assert float(by_rule["quantile"][4]) == pytest.approx(quantile, abs=0.5)
    assert float(by_rule["quantile without injected"][4]) == pytest.approx(np.quantile(clean, 0.99), abs=0.5)
    # The defect lifts the quantile far above the clean images; the log-normal fit stays near them.
    assert float(by_rule["log-normal fit"][4]) < 1.2 * np.quantile(clean, 0.99) < float(by_rule["quantile"][4])
    assert by_rule["quantile"][6] == "0.0" and by_rule["quantile without injected"][6] == "100.0"


def test_the_unknown_factor_is_chosen_on_the_other_classes(unknown_bench):
    def run(left_out, known):
        return {"left_out": left_out, "known": known}
    factors = unknown_bench.FACTORS
    results = {"a": {str(f): run(1.0, 0.1 if f == factors[0] else 0.0) for f in factors},
               "b": {str(f): run(1.0 if f <= factors[1] else 0.5, 0.0) for f in factors}}
    # Chosen on b alone for a: the factors up to the second tie at 1.0, the first wins; chosen on a for b:
    # every factor but the first flags nothing known.
    assert unknown_bench.chosen_factor(results, "a") == factors[0]
    assert unknown_bench.chosen_factor(results, "b") == factors[1]


def test_pooled_bounds_scale_each_class_by_its_own_good_scores(thresholds_bench):
    # Two classes perfectly separated on their own, at scales 100x apart: pooled raw scores rank class b's
    # good images above class a's defects; each oracle scale puts them back in one ranking.
    rng = np.random.default_rng(0)
    images = []
    for name, scale in (("a", 1.0), ("b", 100.0)):
        images += [{"class": name, "label": 0, "raw": float(s), "threshold": 1.0}
                   for s in scale * rng.uniform(1.0, 2.0, 40)]
        images += [{"class": name, "label": 1, "raw": float(s), "threshold": 1.0}
                   for s in scale * rng.uniform(3.0, 4.0, 10)]
    bounds = thresholds_bench.pooled_bounds({"images": images})
    assert bounds["mean per-class AUROC"] == 1.0
    assert bounds["raw"] == bounds["per product (the model)"] < 0.9  # one threshold for both: no rescaling
    for name in ("good-score CDF", "robust z of logs", "99th percentile"):
        assert bounds[f"oracle: {name}"] == 1.0
