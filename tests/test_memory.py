import json
import struct

import numpy as np
import pytest

from tailedcore import PatchCore, SoftPatch, load
from tailedcore.memory import ModelFileError, read_model, write_model

from .conftest import SMALL


@pytest.fixture(scope="module")
def fitted(synthetic_root):
    return SoftPatch(**SMALL).fit(synthetic_root)


def test_save_load_predict_identical(fitted, synthetic_root, tmp_path):
    path = tmp_path / "model.safetensors"
    fitted.save(path)
    loaded = load(path)
    assert type(loaded) is SoftPatch
    assert loaded.set_params(run=fitted.run).get_params() == fitted.get_params()  # the run settings are not saved
    images = sorted((synthetic_root / "stripes" / "test").rglob("*.png"))
    a, b = fitted.predict(images), loaded.predict(images)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    np.testing.assert_array_equal(a.anomaly_maps, b.anomaly_maps)
    np.testing.assert_array_equal(loaded.memory_.weights, fitted.memory_.weights)


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + size :])


def test_refuses_tampered_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "m.safetensors"
    write_model(path, {"memory": np.ones((4, 3), np.float32)}, {"method": "patchcore", "params": {}})
    assert read_model(path)[1]["method"] == "patchcore"

    edited = bytearray(path.read_bytes())
    edited[-1] ^= 0xFF  # flip bits of the last array value
    (tmp_path / "edited.safetensors").write_bytes(bytes(edited))
    with pytest.raises(ModelFileError, match="checksum"):
        read_model(tmp_path / "edited.safetensors")

    def edited_copy(name, key, value):
        def edit(header):
            meta = json.loads(header["__metadata__"]["tailedcore"])
            target = meta["config"] if key == "method" else meta
            target[key] = value
            header["__metadata__"]["tailedcore"] = json.dumps(meta)

        copy = tmp_path / name
        copy.write_bytes(path.read_bytes())
        _rewrite_header(copy, edit)
        return copy

    with pytest.raises(ModelFileError, match="version 99"):
        read_model(edited_copy("v99.safetensors", "format_version", 99))
    with pytest.raises(ModelFileError, match="checksum"):
        read_model(edited_copy("relabeled.safetensors", "method", "softpatch"))

    (tmp_path / "short.safetensors").write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ModelFileError):
        read_model(tmp_path / "short.safetensors")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04\x95 not a model")
    with pytest.raises(ModelFileError, match="not a tailedcore model"):
        read_model(tmp_path / "pickle.pt")
    with pytest.raises(ModelFileError, match="not found"):
        load(tmp_path / "missing.safetensors")


def test_unfitted_detector_refuses(tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchCore(**SMALL).save(tmp_path / "x.safetensors")
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchCore(**SMALL).predict([])


def test_wrong_overrides_and_names_are_refused(fitted, tmp_path):
    path = tmp_path / "m.safetensors"
    fitted.save(path)
    with pytest.raises(ValueError, match="softpatch: unknown parameter: colour"):
        load(path, colour="red")
    from PIL import Image

    with pytest.raises(ValueError, match="2 given for 1 images"):
        fitted.predict_images([Image.new("RGB", (64, 64))], ["a", "b"])
