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
    # A product whose own thresholds rest on fewer held-out images (images left out of the memory besides)
    # has no rows: the rules compare thresholds of held-out images alone.
    few = [{"product": 1, "raw": 1.0, "injected": False}] * 3
    result = {**result, "calibration": held_out + few, "product_thresholds": {"0": {}, "1": {}}}
    assert {row[0] for row in thresholds_bench.threshold_rules(result)} == {0}


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


def test_fallback_rules_rescale_only_the_products_without_their_own_threshold(thresholds_bench):
    # Products 0, 1 (scale and own threshold 10) and 2 (30) are calibrated; product 3 is not and scores on
    # the scale of 10. The global threshold (100) and the largest own one (30) compress product 3's defects
    # below the others' good images; the median of the own thresholds (10) puts them back above.
    rng = np.random.default_rng(0)
    images = []
    for product, scale in ((0, 10.0), (1, 10.0), (2, 30.0), (3, 10.0)):
        images += [{"class": str(product), "product": product, "label": 0, "raw": float(s)}
                   for s in scale * rng.uniform(0.5, 1.0, 40)]
        images += [{"class": str(product), "product": product, "label": 1, "raw": float(s)}
                   for s in scale * rng.uniform(1.5, 2.0, 10)]
    result = {"images": images, "global_thresholds": {"image": 100.0},
              "product_thresholds": {"0": {"image": 10.0}, "1": {"image": 10.0}, "2": {"image": 30.0}}}
    rules = thresholds_bench.fallback_rules(result)
    assert list(rules) == ["the global threshold (what fit does)", "the median of the products' own",
                           "the largest of the products' own"]
    assert rules["the median of the products' own"] == 1.0
    assert rules["the global threshold (what fit does)"] < rules["the largest of the products' own"] < 1.0


def test_the_summary_row_names_the_judged_classes_outside_the_false_alarm_range(thresholds_bench):
    images = [{"class": c, "label": label, "raw": raw, "threshold": 1.0}
              for c in ("a", "b") for label, raw in ((0, 1.0), (0, 2.0), (1, 3.0))]
    result = {"judged_classes": ["a", "b"], "product_thresholds": {"0": {}},
              "classes": {"a": {"false_alarms_product": 0.02}, "b": {"false_alarms_product": 0.087}},
              "mean_flagged_product": 0.4, "mean_flagged_global": 0.1, "mean_class_auroc": 1.0,
              "pooled_auroc_product": 0.7, "images": images}
    row = thresholds_bench.summary_row("set", result)
    assert row[:5] == ["set", 1, "a, b", "b 8.7", "40.0 / 10.0"]
    assert row[5].startswith("70.0 / ") and row[5].endswith(" / 100.0")


def test_small_products_take_their_median_times_the_shared_shape(thresholds_bench):
    # Product 0 (class a, judged): 31 held-out scores around 1; product 1 (class b): 4 images left out of the
    # memory, all at 10. The shared shape is the 99% quantile of every score over its product's median.
    head = np.linspace(0.5, 1.5, 31)
    shape = np.quantile(np.concatenate([head, np.ones(4)]), 0.99)
    images = [{"class": "a", "label": 0, "raw": 1.0, "product": 0}] * 3 + \
        [{"class": "a", "label": 1, "raw": 2.0, "product": 0}] + \
        [{"class": "b", "label": 0, "raw": 10 * shape * 0.99, "product": 1},
         {"class": "b", "label": 1, "raw": 10 * shape * 1.01, "product": 1}]
    result = {"calibration": [{"product": 0, "raw": float(v), "injected": False} for v in head],
              "left_out": {"1": [10.0] * 4}, "product_thresholds": {"0": {"image": 1.49}, "1": {"image": 10.0}},
              "global_thresholds": {"image": 5.0}, "judged_classes": ["a"], "images": images}
    rows = thresholds_bench.small_product_rules(result)
    # own quantile: b's good image is above 10; shared shape: 10 x shape separates b's two images
    assert rows["own quantile (what fit does)"][3:] == ["100.0", "100.0"]
    assert rows["shared shape"][3:] == ["0.0", "100.0"]
    assert rows["shared shape"][1:3] == ["none", "100.0"]  # a keeps its own threshold of 1.49
    assert rows["shared shape, every product"][1:3] == ["none", "100.0"]  # a: 1.0 < shape <= 2.0
