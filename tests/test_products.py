"""Products: what a model found in its training set, kept in its model file, listed by the CLI."""

import numpy as np
import pytest

from tailedcore import PatchCore, TailedCore, load
from tailedcore.app.cli import main
from tailedcore.products import EXAMPLES, THUMBNAIL

from .conftest import real_subset

# Three real products: a head (bottle), a smaller one (pcb) and a one-image tail (screw).
TRAIN = {"bottle": 10, "pcb": 6, "screw": 1}
PARAMS = {"resize": 72, "crop": 64, "progress": False, "batch_size": 8, "calibration_share": 0.0}


@pytest.fixture(scope="module")
def images():
    return real_subset(TRAIN, 1)


@pytest.fixture(scope="module")
def fitted(images, tmp_path_factory):
    train, _ = images
    detector = TailedCore(**PARAMS).fit(train)
    path = tmp_path_factory.mktemp("products") / "model.safetensors"
    detector.save(path)
    return detector, path


def product_of(products, name: str) -> set[int]:
    """The products of the training images of class ``name``."""
    return {int(products.labels[i]) for i, path in enumerate(products.paths) if f"/{name}/" in path}


def test_each_class_is_one_product_and_the_one_image_class_is_tail(fitted):
    products = fitted[0].products_
    assert len(products) == 3
    assert products.sizes.tolist() == [10, 6, 1]  # largest first
    assert [product_of(products, name) for name in TRAIN] == [{0}, {1}, {2}]
    assert products.tail.tolist() == [False, False, True]
    assert products.tail_paths() == [p for p in products.paths if "/screw/" in p]
    assert products.thumbnails.shape == (3, EXAMPLES, THUMBNAIL, THUMBNAIL, 3)
    assert products.thumbnails[2, 0].any() and not products.thumbnails[2, 1].any()  # one member only


def test_memory_rows_know_their_product(fitted):
    detector, _ = fitted
    products = detector.products_
    assert products.memory_products.shape == (len(detector.memory_),)
    tail_rows = detector.memory_.info["tail_memory"]
    # The tail's rows (its image and its views) come first in TailedCore's memory and are all screw;
    # the LOF-denoised rows that follow are drawn from every image.
    assert (products.memory_products[:tail_rows] == 2).all()
    assert set(products.memory_products[tail_rows:].tolist()) == {0, 1, 2}


def test_products_survive_the_model_file_and_assign_new_images(fitted, images):
    detector, path = fitted
    loaded = load(path).products_
    original = detector.products_
    np.testing.assert_array_equal(loaded.labels, original.labels)
    np.testing.assert_array_equal(loaded.memory_products, original.memory_products)
    np.testing.assert_array_equal(loaded.thumbnails, original.thumbnails)
    assert loaded.tail.tolist() == original.tail.tolist() and loaded.paths == original.paths
    assert loaded.estimator == detector.policy.tail
    # A training image is at distance 0 from itself: it is assigned to its own product.
    assigned, distance = loaded.assign(original.mean_patches)
    np.testing.assert_array_equal(assigned, original.labels)
    np.testing.assert_allclose(distance, 0.0, atol=1e-6)
    assert not loaded.is_unknown(assigned, distance, 2.5).any()


def test_the_unknown_limit_scales_with_each_products_spread(fitted):
    products = fitted[0].products_
    spreads = products.spreads()
    assert np.isfinite(spreads[:2]).all() and np.isnan(spreads[2])  # the one-image tail has no spread
    limits = products.unknown_limits(2.0)
    median = np.median(spreads[:2])
    np.testing.assert_allclose(limits, 2.0 * np.array([max(spreads[0], median), max(spreads[1], median), median]))
    assert (products.unknown_limits(None) == np.inf).all()
    over = products.is_unknown(np.array([0, 0, 2]), np.array([limits[0] * 0.99, limits[0] * 1.01, limits[2] * 1.01]),
                               2.0)
    assert over.tolist() == [False, True, True]


def test_predictions_name_the_product_and_an_unknown_one(fitted, images, tmp_path):
    detector, _ = fitted
    _, test = images  # one image of every test folder of bottle, pcb and screw
    others = real_subset({"magnetic_tile": 0, "concrete": 0}, 1)[1]  # products the model never saw
    predictions = detector.predict(test + others)
    names = [p.parts[-4] for p in predictions.paths]
    expected = {"bottle": 0, "pcb": 1, "screw": 2}
    known = np.array([name in expected for name in names])
    assert [int(p) for p, k in zip(predictions.products, known) if k] == [expected[n] for n in names if n in expected]
    assert predictions.unknown[~known].all()
    assert not predictions.unknown[known & (predictions.product_distances < 1e-3)].any()
    assert predictions.unknown[known].mean() <= 0.25  # defective images stay close to their product
    records = [predictions.record(i) for i in range(len(predictions.paths))]
    assert all(r["product"] in (0, 1, 2) for r in records)  # the nearest product is named either way
    assert [r["unknown_product"] for r in records] == predictions.unknown.tolist()


def test_per_product_thresholds_from_normal_images(tmp_path):
    train, _ = real_subset({"bottle": 30, "pcb": 6}, 0)
    detector = PatchCore(**PARAMS).fit(train[:5] + train[30:33])
    normal = train[5:30] + train[33:36]  # 25 bottle and 3 pcb images the model did not see
    global_thresholds = detector.calibrate(normal)
    assert sorted(detector.product_thresholds_) == [0]  # pcb has fewer than MIN_IMAGES: the global ones
    predictions = detector.predict(normal)
    bottle = predictions.products == 0
    assert bottle.sum() == 25 and (predictions.products[~bottle] == 1).all()
    own = detector.product_thresholds_[0]
    assert own.images == 25 and own.image == pytest.approx(np.quantile(predictions.image_scores[bottle], 0.99))
    assert global_thresholds.images == 28
    np.testing.assert_allclose(predictions.image_thresholds, np.where(bottle, own.image, global_thresholds.image))
    assert [predictions.record(i)["threshold_of"] for i in range(len(normal))] == \
        ["product" if b else "global" for b in bottle]
    detector.save(tmp_path / "model.safetensors")
    loaded = load(tmp_path / "model.safetensors")
    assert loaded.product_thresholds_[0] == own
    assert main(["--quiet", "products", str(tmp_path / "model.safetensors")]) == 0
    detector.set_params(calibration_scope="global").calibrate(normal)
    assert detector.product_thresholds_ == {}


def test_held_out_images_of_a_large_product_calibrate_its_own_thresholds():
    train, _ = real_subset({"bottle": 40, "pcb": 6}, 0)
    detector = PatchCore(**{**PARAMS, "calibration_share": 0.5, "calibration_min_class": 4},
                         calibration_small_products="global").fit(train)
    assert len(detector.calibration_paths_) == 23  # 20 of bottle, 3 of pcb
    assert sorted(detector.product_thresholds_) == [0] and detector.product_thresholds_[0].images == 20
    assert detector.thresholds_.images == 23


def test_a_small_product_gets_thresholds_from_its_images_left_out_of_the_memory():
    """calibration small_products "leave-one-out" (the default): pcb (6 images, 3 held out, fewer than
    MIN_IMAGES) gets its own thresholds from its 3 held-out images and its 3 kept ones, each scored against the
    memory without the rows made of it. With the whole memory kept (coreset ratio 1) that is the score of a
    model fitted without it."""
    train, _ = real_subset({"bottle": 40, "pcb": 6, "screw": 1}, 0)
    params = {**PARAMS, "calibration_share": 0.5, "calibration_min_class": 4, "policy__coreset__ratio": 1.0}
    detector = PatchCore(**params).fit(train)
    assert sorted(detector.product_thresholds_) == [0, 1]  # the one-image screw product keeps the global ones
    pcb = detector.product_thresholds_[1]
    assert pcb.images == 6 and pcb.source.endswith("(3 held out, 3 left out of the memory)")
    kept = detector.training_paths_
    held_scores = detector.predict([p for p in detector.calibration_paths_ if "/pcb/" in p.as_posix()]).image_scores
    left_out = []
    for path in [p for p in kept if "/pcb/" in p.as_posix()]:
        without = PatchCore(**{**params, "calibration_share": 0.0}).fit([p for p in kept if p != path])
        left_out.append(without.predict([path]).image_scores[0])
    expected = np.quantile(np.concatenate([held_scores, left_out]), 0.99)
    assert pcb.image == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(np.sort(detector.left_out_scores_[1]), np.sort(left_out), rtol=1e-4)
    assert pcb.image > detector.thresholds_.image  # pcb's images are farther from the rest than bottle's
    global_rule = PatchCore(**params, calibration_small_products="global").fit(train)
    assert sorted(global_rule.product_thresholds_) == [0]
    # "leave-one-out-median": pcb's 6 images give its median; the shape is that of all 26 calibration images
    median_rule = PatchCore(**params, calibration_small_products="leave-one-out-median").fit(train)
    held_out = median_rule.predict(median_rule.calibration_paths_)
    scores = np.concatenate([held_out.image_scores, median_rule.left_out_scores_[1]])
    products = np.concatenate([held_out.products, [1] * 3])
    medians = np.array([np.median(scores[products == p]) for p in products])
    expected = np.median(scores[products == 1]) * np.quantile(scores / medians, 0.99)
    pcb = median_rule.product_thresholds_[1]
    assert pcb.image == pytest.approx(expected, rel=1e-4) and pcb.images == 6 and "their median" in pcb.source
    bottle = held_out.image_scores[held_out.products == 0]  # 20 held-out images: its own quantile
    assert median_rule.product_thresholds_[0].image == pytest.approx(np.quantile(bottle, 0.99), rel=1e-4)


def test_patchcore_finds_products_with_the_default_estimator(images):
    detector = PatchCore(**PARAMS).fit(images[0])
    products = detector.products_
    assert products.sizes.tolist() == [10, 6, 1] and products.tail.tolist() == [False, False, True]
    assert len(products.memory_products) == len(detector.memory_)


def test_a_model_without_products_loads_and_says_so(fitted, tmp_path, caplog, capsys):
    detector, _ = fitted
    kept, detector.products_ = detector.products_, None
    try:
        detector.save(tmp_path / "old.safetensors")
    finally:
        detector.products_ = kept
    with caplog.at_level("INFO"):
        assert load(tmp_path / "old.safetensors").products_ is None
    assert sum("before models kept their products" in r.message for r in caplog.records) == 1
    assert main(["products", str(tmp_path / "old.safetensors")]) == 0
    assert "no products" in capsys.readouterr().out


def test_cli_lists_the_products_and_writes_a_page(fitted, tmp_path, capsys):
    _, path = fitted
    assert main(["--quiet", "products", str(path), "--out", str(tmp_path / "page")]) == 0
    out = capsys.readouterr().out
    assert "| product | images | role | memory rows | image threshold |" in out
    assert "| 2 | 1 | tail |" in out and "| none |" in out
    html = (tmp_path / "page" / "products.html").read_text()
    assert html.count("<h2>Product") == 3 and html.count("data:image/png;base64") == 4 + 4 + 1


def test_the_calibration_hold_out_does_not_turn_a_head_product_into_tail():
    """The memory's tail is the products' tail: a product counted as head before its images are set aside for
    thresholds (4 of bottle, above the largest tail size of 3) stays head after (3 kept images)."""
    train, _ = real_subset({"screw": 40, "bottle": 4, "pcb": 1}, 0)
    detector = TailedCore(**{**PARAMS, "calibration_share": 0.25, "calibration_min_class": 4},
                          policy__tail__max_tail_class=3).fit(train)
    products = detector.products_
    assert products.sizes.tolist() == [40, 4, 1] and products.tail.tolist() == [False, False, True]
    assert len(detector.calibration_paths_) == 11  # 10 of screw, 1 of bottle
    assert detector.memory_.info["tail_images"] == 1 and detector.memory_.info["max_k"] == 3
