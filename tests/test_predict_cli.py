"""tailedcore predict: which images are scored, where the outputs go, when it fails."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from tailedcore import PatchCore, load
from tailedcore.app.cli import main
from tailedcore.data import ImageLoadError

from .conftest import SMALL


@pytest.fixture(scope="module")
def model(synthetic_root, tmp_path_factory):
    detector = PatchCore(**SMALL, calibration_share=0.0).fit(synthetic_root / "checker" / "train" / "good")
    detector.calibrate([synthetic_root / "checker" / "test" / "good"])
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    detector.save(path)
    return str(path)


def predict(model, *inputs, out, extra=()):
    return main(["--quiet", "predict", model, *map(str, inputs), "--out", str(out), *extra])


def test_folders_are_searched_recursively_and_names_keep_the_relative_path(model, synthetic_root, tmp_path):
    out = tmp_path / "p"
    assert predict(model, synthetic_root / "checker" / "test", out=out) == 0
    overlays = sorted(r["overlay"] for r in json.loads((out / "scores.json").read_text()))
    assert overlays == [f"overlays/{kind}/00{i}.png" for kind in ("defect", "good") for i in range(3)]
    assert all((out / overlay).is_file() for overlay in overlays)


def test_nothing_scored_is_a_failure(model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert predict(model, tmp_path / "empty", out=tmp_path / "p1") == 1
    assert "no images" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    assert predict(model, broken, out=tmp_path / "p2") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no image could be scored" in err and "broken.png" in err


def test_an_existing_output_folder_is_refused_or_replaced_never_mixed(model, synthetic_root, tmp_path, capsys):
    out = tmp_path / "p"
    assert predict(model, synthetic_root / "checker" / "test", out=out) == 0
    assert predict(model, synthetic_root / "checker" / "test" / "good" / "000.png", out=out) == 1
    assert "--overwrite" in capsys.readouterr().err and len(list((out / "overlays").rglob("*.png"))) == 6
    assert main(["--quiet", "predict", model, str(synthetic_root / "checker" / "test" / "good" / "000.png"),
                 "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["masks/000.png", "overlays/000.png"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["--quiet", "predict", model, str(synthetic_root / "checker" / "test" / "good"), "--out", str(other),
                 "--overwrite"]) == 1
    assert "scores.csv" in capsys.readouterr().err and [p.name for p in other.iterdir()] == ["notes.txt"]


def test_small_images_are_warned_about_or_refused_with_strict(model, tmp_path, caplog, capsys):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((10, 10, 3), 128, np.uint8)).save(tiny)
    detector = load(model)
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        assert len(detector.predict([tiny]).paths) == 1
    assert any("tiny.png: 10x10 image upscaled 8.0x" in r.getMessage() for r in caplog.records)
    with pytest.raises(ImageLoadError, match="tiny.png: 10x10 image upscaled"):
        detector.predict([tiny], strict=True)
    assert main(["--quiet", "predict", model, str(tiny), "--out", str(tmp_path / "p"), "--strict"]) == 1
    assert "tiny.png: 10x10 image upscaled" in capsys.readouterr().err


def test_only_images_decided_defect_carry_a_mask(model, synthetic_root, tmp_path):
    predictions = load(model).predict(synthetic_root / "checker" / "test" / "good")
    ok = ~predictions.decisions
    assert ok.any() and not predictions.defect_masks()[ok].any()
    assert predict(model, synthetic_root / "checker" / "test", out=tmp_path / "p") == 0
    for record in json.loads((tmp_path / "p" / "scores.json").read_text()):
        mask = np.asarray(Image.open(tmp_path / "p" / record["mask"]))
        # An unknown product keeps the mask of its score's decision.
        assert (record["defect_pixels"] > 0) <= (record["decision"] != "ok")
        assert record["defect_pixels"] == np.count_nonzero(mask)


def test_scores_csv_has_the_same_columns_calibrated_or_not_and_errors_go_to_stderr(model, synthetic_root, tmp_path,
                                                                                      capsys):
    import csv
    import shutil

    uncalibrated = load(model)
    uncalibrated.thresholds_ = None
    uncalibrated.save(tmp_path / "uncalibrated.safetensors")
    images = tmp_path / "images"
    shutil.copytree(synthetic_root / "checker" / "test" / "good", images)
    (images / "broken.png").write_bytes(b"not a picture")
    columns = ["image", "score", "decision", "raw_score", "product", "unknown_product", "threshold", "threshold_of",
               "defect_pixels", "overlay", "mask", "error"]
    for name, path in (("calibrated", model), ("uncalibrated", str(tmp_path / "uncalibrated.safetensors"))):
        capsys.readouterr()
        assert predict(path, images, out=tmp_path / name) == 0
        captured = capsys.readouterr()
        with open(tmp_path / name / "scores.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
            assert list(rows[0]) == columns
        broken = [row for row in rows if row["image"].endswith("broken.png")]
        assert len(broken) == 1 and broken[0]["error"] and not any(broken[0][c] for c in columns[1:-1])
        assert all(not row["error"] and row["raw_score"] for row in rows if row not in broken)
        assert all(bool(row["score"]) == (name == "calibrated") for row in rows if row not in broken)
        assert [line for line in captured.err.splitlines() if "broken.png" in line] == [
            line for line in captured.err.splitlines() if line.startswith("tailedcore: skipped: ")]
        assert len([line for line in captured.err.splitlines() if "broken.png" in line]) == 1
        assert "broken.png" not in captured.out


def test_unknown_factor_none_answers_every_image_with_a_decision(model, synthetic_root, tmp_path):
    out = tmp_path / "p"
    assert predict(model, synthetic_root / "checker" / "test", out=out, extra=["--unknown-factor", "none"]) == 0
    records = json.loads((out / "scores.json").read_text())
    assert {r["decision"] for r in records} <= {"ok", "defect"} and not any(r["unknown_product"] for r in records)


def test_no_images_on_an_engine_of_several_workers_give_empty_predictions(cli_model, tmp_path):
    """The shard plan divided by zero images (range step 0); the empty answer needs no task."""
    from types import SimpleNamespace

    detector = load(cli_model, progress=False)
    detector._engine = SimpleNamespace(workers=2, map=lambda *args: pytest.fail("no task for no images"))
    empty = tmp_path / "empty"
    empty.mkdir()
    predictions = detector.predict([empty])
    assert predictions.paths == [] and predictions.image_scores.shape == (0,)
