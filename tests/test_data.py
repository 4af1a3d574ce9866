import numpy as np
import pytest
from PIL import Image

from tailedcore.data import (
    DatasetError,
    ImageLoadError,
    collect_images,
    is_mvtec_root,
    load_image,
    load_mask,
    load_mvtec,
    training_images,
)


def test_mvtec_layout(synthetic_root):
    classes = load_mvtec(synthetic_root)
    assert [c.name for c in classes] == ["checker", "dots", "grain", "stripes"]
    stripes = classes[-1]
    assert len(stripes.train) == 12 and len(stripes.test) == 6 and stripes.has_masks
    defects = [s for s in stripes.test if s.label == 1]
    assert all(s.mask_path is not None and s.mask_path.name.endswith("_mask.png") for s in defects)
    assert all(s.mask_path is None for s in stripes.test if s.label == 0)
    merged = training_images(synthetic_root)
    assert len(merged) == 25 and is_mvtec_root(synthetic_root)


def test_geometry_resize_shorter_side_then_center_crop(tmp_path):
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, 90:110] = 255  # a vertical bar in the middle
    Image.fromarray(image).save(tmp_path / "wide.png")
    mask = (image[..., 0] > 0).astype(np.uint8) * 255
    Image.fromarray(mask).save(tmp_path / "wide_mask.png")
    loaded = load_image(tmp_path / "wide.png", resize=50, crop=48)
    loaded_mask = load_mask(tmp_path / "wide_mask.png", resize=50, crop=48)
    assert loaded.shape == (48, 48, 3) and loaded_mask.shape == (48, 48)
    # 200 x 100 -> 100 x 50 -> crop columns 26..74: the bar (45..55) lands at 19..29.
    assert loaded_mask[:, 20:28].all() and not loaded_mask[:, :18].any() and not loaded_mask[:, 31:].any()
    assert (loaded[:, 20:28, 0] > 200).all()
    assert not load_mask(None, 50, 48).any()


def test_gray_and_palette_images_become_rgb(tmp_path):
    Image.fromarray(np.full((30, 30), 77, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((30, 30), 3, np.uint8), mode="L").convert("P").save(tmp_path / "pal.png")
    assert load_image(tmp_path / "gray.png", 32, 32).shape == (32, 32, 3)
    assert load_image(tmp_path / "pal.png", 32, 32).shape == (32, 32, 3)


def test_errors_name_the_path(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(DatasetError, match="no <class>/train/good"):
        load_mvtec(tmp_path)
    with pytest.raises(DatasetError, match="nothing"):
        collect_images([tmp_path / "nothing"])
