"""Bad and unusual image files: each loads correctly or is reported with its path and reason."""

import logging

import numpy as np
import pytest
from PIL import Image

from tailedcore import PatchCore
from tailedcore.data import ImageLoadError, load_image

from ..conftest import SMALL


def save(array, path, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture
def broken(tmp_path):
    """One file of each unreadable kind."""
    good = save(np.full((40, 40, 3), 120, np.uint8), tmp_path / "ok.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    jpeg = save(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), tmp_path / "x.jpg")
    cut_jpeg = tmp_path / "cut.jpg"
    cut_jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    return [truncated, cut_jpeg, empty, text]


def test_each_unreadable_kind_names_path_and_reason(broken):
    for path in broken:
        with pytest.raises(ImageLoadError) as info:
            load_image(path, 32, 32)
        message = str(info.value)
        assert str(path) in message and "cannot read image (" in message and message.count("\n") == 0


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "I;16", "L", "RGBA", "1"])
def test_modes_are_converted(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50)
    elif mode == "P":
        image = base.convert("P")
    else:
        image = base.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    loaded = load_image(path, 32, 32)
    assert loaded.shape == (32, 32, 3) and loaded.dtype == np.uint8
    if mode == "I;16":
        assert loaded.max() > 220 and loaded.min() < 10  # 16-bit range scaled to 8 bits, not clipped


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_scaled_by_the_bit_depth_not_their_content(tmp_path, suffix):
    dim = np.random.default_rng(2).integers(0, 120, (30, 40)).astype(np.uint8)  # a dark image
    save(dim, tmp_path / "8bit.png")
    save(dim.astype(np.uint16) * 257, tmp_path / f"16bit{suffix}")  # the same image at 16 bits
    expected = load_image(tmp_path / "8bit.png", 32, 32)
    np.testing.assert_array_equal(load_image(tmp_path / f"16bit{suffix}", 32, 32), expected)


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red
    array[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: the left half goes on top
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    loaded = load_image(path, 32, 32)  # 20 x 40 (portrait after rotation) -> 32 x 64 -> middle 32 x 32
    assert loaded[2, 16, 0] > 200 and loaded[2, 16, 2] < 60  # top: red
    assert loaded[29, 16, 2] > 200 and loaded[29, 16, 0] < 60  # bottom: blue


def test_small_images_are_upscaled(tmp_path):
    path = save(np.full((6, 9, 3), 200, np.uint8), tmp_path / "tiny.png")
    assert load_image(path, 80, 64).shape == (64, 64, 3)


def test_decompression_bomb_limit(tmp_path, monkeypatch):
    path = save(np.zeros((100, 100, 3), np.uint8), tmp_path / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="large.png"):
        load_image(path, 32, 32)


def test_training_skips_with_one_warning_each_and_a_count(synthetic_root, broken, tmp_path, caplog):
    images = sorted((synthetic_root / "stripes" / "train" / "good").glob("*.png"))[:6] + broken
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        detector = PatchCore(**SMALL).fit(images)
    warnings = [r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage()]
    assert len(warnings) == 4 and all(any(str(p) in w for w in warnings) for p in broken)
    assert any("skipped 4 unreadable training image(s) of 10" in r.getMessage() for r in caplog.records)
    assert len(detector.training_paths_) == 6 and [p for p, _ in detector.skipped_] == broken
    with pytest.raises(ImageLoadError, match="truncated.png"):
        PatchCore(**SMALL).fit(images, strict=True)
    with pytest.raises(ValueError, match="no readable training images"):
        PatchCore(**SMALL).fit(broken)


def test_prediction_reports_per_file_and_keeps_going(synthetic_root, broken):
    detector = PatchCore(**SMALL).fit(synthetic_root / "checker" / "train" / "good")
    good = sorted((synthetic_root / "checker" / "test" / "good").glob("*.png"))
    predictions = detector.predict(good[:1] + broken + good[1:])
    assert predictions.paths == good and len(predictions.image_scores) == len(good)
    assert [p for p, _ in predictions.failures] == broken
    assert all(str(p) in reason for p, reason in predictions.failures)
    with pytest.raises(ImageLoadError):
        detector.predict(broken, strict=True)
