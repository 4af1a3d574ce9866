import numpy as np
import pytest

from tailedcore import PatchCore, load
from tailedcore.bench.synthetic import make_dataset
from tailedcore.thresholds import (
    Thresholds,
    calibrate_f1,
    calibrate_false_alarm,
    calibrate_shared_shape,
    defect_masks,
    held_out_images,
    normalise,
)

from .conftest import SMALL, real_subset


def test_false_alarm_thresholds_hand_checked():
    scores = np.arange(1, 101, dtype=np.float64)  # 1..100
    maps = np.zeros((100, 4, 4))
    maps[:, 0, 0] = scores
    thresholds = calibrate_false_alarm(scores, maps, false_alarm_rate=0.1)
    assert thresholds.image == pytest.approx(90.1)  # numpy's linear quantile of 1..100 at 0.9
    assert (scores > thresholds.image).mean() == pytest.approx(0.1)
    assert thresholds.pixel == 0.0  # 90% of map values are zero
    assert thresholds.image_range == (1.0, 100.0)
    with pytest.raises(ValueError):
        calibrate_false_alarm(np.empty(0), maps[:0])


def test_normalisation_puts_threshold_at_half():
    assert normalise(np.array([5.0]), 5.0)[0] == 0.5
    np.testing.assert_allclose(normalise(np.array([0.0, 15.0, 45.0]), 5.0), [0.0, 0.75, 0.9])
    t = Thresholds(2.0, 3.0, (0.0, 4.0), (0.0, 6.0), "test")
    assert Thresholds.from_dict(t.to_dict()) == t


def test_f1_threshold_and_masks():
    labels = np.array([0, 0, 0, 1, 1])
    thresholds = calibrate_f1(labels, np.array([0.1, 0.2, 0.3, 0.8, 0.9]),
                              maps=np.zeros((5, 2, 2)) + np.arange(5)[:, None, None])
    assert thresholds.image == pytest.approx(0.8)
    maps = np.zeros((1, 20, 20))
    maps[0, 2:8, 2:8] = 1.0  # 36 px blob
    maps[0, 15, 15] = 1.0  # a single noisy pixel
    masks = defect_masks(maps, 0.5, min_area=4)
    assert masks[0, 2:8, 2:8].all() and not masks[0, 15, 15] and masks.sum() == 36
    with pytest.raises(ValueError, match="normal and anomalous"):
        calibrate_f1(np.zeros(3), np.arange(3))


def test_fit_sets_images_aside_and_calibrates(tmp_path):
    root = make_dataset(tmp_path / "data", {"stripes": 30, "dots": 3}, test_good=4, test_defect=4, size=64, seed=5)
    detector = PatchCore(calibration_share=0.2, calibration_small_products="global", **SMALL).fit(root)
    assert len(detector.calibration_paths_) == 6  # 20% of the 30 images of the only large class
    assert all("stripes" in str(p) for p in detector.calibration_paths_)
    assert not set(detector.calibration_paths_) & set(detector.training_paths_)
    assert len(detector.training_paths_) == 27  # the tail class stays whole
    thresholds = detector.thresholds_
    assert thresholds is not None and "6 held-out" in thresholds.source
    predictions = detector.predict([root / "stripes" / "test" / "defect", root / "stripes" / "test" / "good"])
    assert predictions.decisions[:4].all()
    path = tmp_path / "m.safetensors"
    detector.save(path)
    assert load(path).thresholds_ == thresholds
    unchanged = PatchCore(calibration_share=0.0, **SMALL).fit(root)
    assert unchanged.thresholds_ is None and len(unchanged.training_paths_) == 33


def test_cli_calibrate_on_validation_leaves_out_unreadable_and_unmasked_images(tmp_path):
    from tailedcore.app.cli import main

    root = make_dataset(tmp_path / "data", {"stripes": 8, "checker": 6}, test_good=3, test_defect=3, size=64, seed=4)
    model = tmp_path / "model.safetensors"
    PatchCore(**SMALL, calibration_share=0.0).fit(root).save(model)
    (root / "checker" / "test" / "good" / "000.png").write_bytes(b"not a picture")
    next((root / "stripes" / "ground_truth" / "defect").iterdir()).unlink()
    assert main(["--quiet", "calibrate", str(model), "--validation", str(root)]) == 0
    thresholds = load(model).thresholds_
    assert thresholds.source == "F1-max on 11 labeled validation images"  # 12 test images, one unreadable
    assert thresholds.pixel_range[0] <= thresholds.pixel <= thresholds.pixel_range[1]


def test_cli_calibrate_takes_a_false_alarm_rate(tmp_path):
    from tailedcore.app.cli import main

    root = make_dataset(tmp_path / "data", {"stripes": 8}, test_good=3, test_defect=3, size=64, seed=4)
    model = tmp_path / "model.safetensors"
    PatchCore(**SMALL, calibration_share=0.0).fit(root).save(model)
    normal = str(root / "stripes" / "train" / "good")
    assert main(["--quiet", "calibrate", str(model), "--normal", normal, "--false-alarm-rate", "0.5"]) == 0
    calibrated = load(model)
    assert calibrated.thresholds_.source == "false-alarm rate 0.5 on 8 normal calibration images"
    assert calibrated.false_alarm_rate == 0.5
    with pytest.raises(SystemExit) as info:
        main(["calibrate", str(model), "--validation", str(root), "--false-alarm-rate", "0.5"])
    assert info.value.code == 2


def test_calibrate_says_which_normal_images_it_could_not_read(tmp_path, caplog):
    root = make_dataset(tmp_path / "data", {"stripes": 8}, test_good=3, test_defect=3, size=64, seed=4)
    detector = PatchCore(**SMALL, calibration_share=0.0).fit(root)
    normal = tmp_path / "normal"
    normal.mkdir()
    for image in sorted((root / "stripes" / "train" / "good").iterdir())[:4]:
        (normal / image.name).write_bytes(image.read_bytes())
    (normal / "broken.png").write_bytes(b"not a picture")
    thresholds = detector.calibrate(normal)
    assert thresholds.source.endswith("on 4 normal calibration images")
    assert any("1 unreadable calibration image(s) of 5 left out" in r.getMessage() and "broken.png" in r.getMessage()
               for r in caplog.records)
    for image in normal.iterdir():
        if image.name != "broken.png":
            image.unlink()
    with pytest.raises(ValueError, match="no calibration image could be read.*broken.png"):
        detector.calibrate(normal)


def test_validation_root_needs_no_training_images(tmp_path):
    import shutil

    from tailedcore.evaluation import calibrate_on_validation

    root = make_dataset(tmp_path / "data", {"stripes": 6, "checker": 6}, test_good=3, test_defect=3, size=64, seed=4)
    detector = PatchCore(**SMALL, calibration_share=0.0).fit(root)
    for name in ("stripes", "checker"):
        shutil.rmtree(root / name / "train")
    thresholds = calibrate_on_validation(detector, root)
    assert thresholds.source == "F1-max on 12 labeled validation images"


def test_thresholds_on_few_images_warn_and_keep_the_count(caplog):
    import logging

    maps = np.zeros((6, 4, 4))
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        thresholds = calibrate_false_alarm(np.arange(6.0), maps, false_alarm_rate=0.01)
    assert thresholds.images == 6 and thresholds.few_images
    assert any("rest on 6 images" in r.getMessage() and "at least 100" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        enough = calibrate_false_alarm(np.arange(200.0), np.zeros((200, 4, 4)), false_alarm_rate=0.01)
    assert enough.images == 200 and not enough.few_images and not caplog.records
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        maps = np.arange(4.0)[:, None, None] + np.zeros((4, 2, 2))
        f1 = calibrate_f1(np.array([0, 0, 1, 1]), np.arange(4.0), maps=maps)
    assert f1.images == 4 and f1.few_images and any("rest on 4 images" in r.getMessage() for r in caplog.records)
    assert f1.source == "F1-max on 4 labeled validation images (pixel: the 0.99 quantile of the normal images' maps)"
    old = thresholds.to_dict()  # a model file written before the count was stored
    del old["images"], old["false_alarm_rate"]
    assert Thresholds.from_dict(old) == thresholds


def test_cli_warns_about_thresholds_on_few_images(tmp_path, caplog):
    import logging

    from tailedcore.app.cli import main

    root = make_dataset(tmp_path / "data", {"stripes": 8}, test_good=3, test_defect=3, size=64, seed=4)
    model = tmp_path / "model.safetensors"
    PatchCore(**SMALL, calibration_share=0.0).fit(root).save(model)
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        assert main(["--quiet", "calibrate", str(model), "--normal", str(root / "stripes" / "test" / "good")]) == 0
        assert main(["--quiet", "predict", str(model), str(root / "stripes" / "test" / "good"),
                     "--out", str(tmp_path / "p")]) == 0
    warnings = [r.getMessage() for r in caplog.records if "rest on 3 images" in r.getMessage()]
    assert len(warnings) == 2  # calibrate, then predict with the calibrated model
    assert load(model).thresholds_.images == 3


def test_normalised_score_keeps_the_ranking_beyond_the_calibration_range():
    t = Thresholds(5.0, 2.0, (0.0, 10.0), (0.0, 4.0), "test")
    raw = np.array([0.0, 1.0, 4.9, 5.0, 5.1, 10.0, 15.0, 30.0, 100.0, 1e4])
    scores = normalise(raw, t.image)
    assert scores[3] == 0.5 and scores[0] == 0.0
    assert np.all(np.diff(scores) > 0) and np.all(scores < 1.0)  # no saturation at 1.0: ranking is kept
    np.testing.assert_allclose(scores, raw / (raw + 5.0))  # score / threshold = x -> x / (1 + x)
    assert t.normalise_pixel(np.array([2.0]))[0] == 0.5


def test_one_product_of_thirty_images_gets_thresholds():
    """The hold-out is drawn per product found by the model's own estimator: 30 images of one product are one
    class of 30, whatever the paper's TailSampler would estimate, so 10% of them calibrate the thresholds."""
    train, _ = real_subset({"screw": 30}, 0)
    detector = PatchCore(resize=72, crop=64, progress=False, batch_size=8, calibration_share=0.1).fit(train)
    assert detector.products_.sizes.tolist() == [30]
    assert len(detector.calibration_paths_) == 3 and len(detector.training_paths_) == 27
    assert detector.thresholds_ is not None and "3 held-out" in detector.thresholds_.source


def test_the_hold_out_is_drawn_from_each_large_product():
    products = np.repeat([0, 1, 2], [40, 20, 19])
    held = held_out_images(products, 0.1, 20, seed=3)
    assert np.bincount(products[held], minlength=3).tolist() == [4, 2, 0]  # the product of 19 stays whole
    np.testing.assert_array_equal(held, held_out_images(products, 0.1, 20, seed=3))
    assert len(held_out_images(products, 0.0, 20, seed=3)) == 0
    assert held_out_images(np.zeros(20, dtype=int), 0.99, 1, seed=0).size == 19  # one image stays for training


def test_small_products_take_their_median_times_the_shape_of_all():
    head, small = np.linspace(0.5, 1.5, 31), np.full(4, 10.0)  # product 0's median 1, product 1's 10
    scores = np.concatenate([head, small])
    products = np.array([0] * 31 + [1] * 4)
    maps = scores[:, None, None].astype(np.float32)  # one pixel per map, its value the image score
    shape = np.quantile(np.concatenate([head, np.ones(4)]), 0.99)
    thresholds = calibrate_shared_shape(scores, maps, products, {1: "images of product 1"}, 0.01)
    assert list(thresholds) == [1]
    assert thresholds[1].image == pytest.approx(10 * shape) and thresholds[1].pixel == pytest.approx(10 * shape)
    assert thresholds[1].images == 4 and thresholds[1].source.startswith("false-alarm rate 0.01 on 4 images")
