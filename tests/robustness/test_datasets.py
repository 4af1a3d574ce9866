"""Dataset layouts gone wrong: clear messages naming the path; undefined metrics are None, never 0."""

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from tailedcore import PatchCore
from tailedcore.bench.synthetic import make_dataset
from tailedcore.data import DatasetError, load_mask, load_mvtec, training_images
from tailedcore.evaluation import evaluate

from ..conftest import SMALL


@pytest.fixture
def root(tmp_path):
    return make_dataset(tmp_path / "data", {"stripes": 8, "checker": 6}, test_good=3, test_defect=3, size=64, seed=3)


def test_class_without_train_good(root):
    shutil.rmtree(root / "checker" / "train" / "good")
    with pytest.raises(DatasetError, match="checker: class folder without train/good"):
        load_mvtec(root)


def test_empty_class_folders(root, caplog):
    for image in (root / "checker" / "train" / "good").iterdir():
        image.unlink()
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        assert len(training_images(root)) == 8
    assert any("checker/train/good: no training images" in r.getMessage() for r in caplog.records)
    for image in (root / "stripes" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="no training images"):
        training_images(root)


def test_defect_images_without_masks_leave_pixel_metrics(root):
    for mask in list((root / "stripes" / "ground_truth" / "defect").iterdir())[:2]:
        mask.unlink()
    evaluation = evaluate(PatchCore(**SMALL).fit(root), root)
    stripes = evaluation.classes["stripes"]
    assert any("2 defective image(s) without a mask left out of pixel metrics" in n for n in stripes.notes)
    assert stripes.metrics["pixel_auroc"] is not None and len(stripes.samples) == 6


def test_masks_of_another_size_or_values(tmp_path):
    mask = np.zeros((20, 40), np.uint8)
    mask[5:15, 10:30] = 1  # 0/1 values instead of 0/255
    Image.fromarray(mask).save(tmp_path / "m.png")
    loaded = load_mask(tmp_path / "m.png", 32, 32, image_size=(80, 40))  # same aspect, twice the size
    assert loaded.any() and loaded.shape == (32, 32)
    with pytest.raises(DatasetError, match="m.png: mask is 40x20 but its image is 50x50"):
        load_mask(tmp_path / "m.png", 32, 32, image_size=(50, 50))


def test_mask_threshold_is_half_the_whole_masks_largest_value(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[:4, :4] = 255  # cropped away below
    mask[28:36, 28:36] = 100  # under half of 255: not a defect
    Image.fromarray(mask).save(tmp_path / "gray.png")
    assert not load_mask(tmp_path / "gray.png", 64, 32).any()


def test_orphan_masks_are_reported(root, caplog):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "stripes" / "ground_truth" / "defect" / "999_mask.png")
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        load_mvtec(root)
    assert any("1 mask file(s) match no test image" in r.getMessage() and "999_mask.png" in r.getMessage()
               for r in caplog.records)


def test_unicode_and_spaces_in_paths(tmp_path):
    root = make_dataset(tmp_path / "données d'essai", {"クラス 1": 6, "tail class é": 2}, test_good=2, test_defect=2,
                        size=64, seed=4)
    evaluation = evaluate(PatchCore(**SMALL).fit(root), root)
    assert set(evaluation.classes) == {"クラス 1", "tail class é"}


def test_metrics_that_cannot_be_computed(root):
    shutil.rmtree(root / "checker" / "test" / "defect")
    shutil.rmtree(root / "checker" / "ground_truth")
    evaluation = evaluate(PatchCore(**SMALL).fit(root), root)
    checker = evaluation.classes["checker"].metrics
    assert checker["image_auroc"] is None and checker["image_f1_max"] is None
    assert evaluation.metrics_json()["mean"]["image_auroc"] == evaluation.classes["stripes"].metrics["image_auroc"]


def test_class_without_readable_test_images_still_gets_a_report(root, tmp_path):
    from tailedcore.report.writers import write_evaluation

    for image in (root / "checker" / "test").rglob("*.png"):
        image.write_bytes(b"not a picture")
    evaluation = evaluate(PatchCore(**SMALL).fit(root), root)
    checker = evaluation.classes["checker"]
    assert "no readable test image" in checker.notes and checker.metrics["image_auroc"] is None
    write_evaluation(evaluation, tmp_path / "report")
    html = (tmp_path / "report" / "report.html").read_text()
    assert "checker" in html and "data:image/png;base64," in html


def test_every_class_is_in_the_table_and_no_test_image_at_all_is_an_error(root, tmp_path, capsys):
    from tailedcore.app.cli import main

    detector = PatchCore(**SMALL).fit(root)
    shutil.rmtree(root / "checker" / "test")
    evaluation = evaluate(detector, root)
    assert evaluation.classes["checker"].notes == ["no test images"]
    assert evaluation.classes["checker"].metrics["image_auroc"] is None
    for image in (root / "stripes" / "test").rglob("*.png"):
        image.write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="no readable test image in any class"):
        evaluate(detector, root)
    model = tmp_path / "model.safetensors"
    detector.save(model)
    assert main(["--quiet", "evaluate", str(model), str(root), "--out", str(tmp_path / "out")]) == 1
    assert "no readable test image in any class" in capsys.readouterr().err
