"""Model files: refused with one line when damaged or foreign; loading runs no code; writes are atomic."""

import os
import pickle

import numpy as np
import pytest
from safetensors.numpy import save_file

from tailedcore import PatchCore, load
from tailedcore.app.cli import main
from tailedcore.memory import ModelFileError, read_model, write_model


class Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_foreign_and_malicious_files_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Payload(str(marker))))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": np.ones(3, np.float32)}, foreign)
    for path in (evil, foreign):
        with pytest.raises(ModelFileError, match="not a tailedcore model"):
            load(path)
    assert not marker.exists()


def test_cli_reports_a_bad_model_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    assert main(["evaluate", str(bad), str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.safetensors" in err[0] and "Traceback" not in err[0]


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    write_model(path, {"memory": np.zeros((2, 2), np.float32)}, {"method": "patchcore", "params": {"seed": 1}})
    before = path.read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_model(path, {"memory": np.ones((5, 2), np.float32)}, {"method": "patchcore", "params": {"seed": 2}})
    monkeypatch.undo()
    assert path.read_bytes() == before and read_model(path)[1]["params"]["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind


def test_unknown_method_or_parameters_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    write_model(path, {"memory": np.zeros((2, 2), np.float32)}, {"method": "magic", "params": {}})
    with pytest.raises(ModelFileError, match="unknown method 'magic'"):
        load(path)
    write_model(path, {"memory": np.zeros((2, 2), np.float32)}, {"method": "patchcore", "params": {"evil": 1}})
    with pytest.raises(ModelFileError, match="unknown parameters"):
        load(path)
    assert PatchCore  # the registry is what load trusts


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_keep_the_usual_permissions(tmp_path, umask):
    from tailedcore._io import atomic_write_bytes, staged_directory

    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "file", b"x")
        with staged_directory(tmp_path / "folder") as staging:
            (staging / "inside").write_bytes(b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "file").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_model_keeps_its_feature_stages_and_older_files_load_with_the_pair(synthetic_root, tmp_path):
    from tailedcore.memory import read_model
    from tailedcore.runtimes import export

    from ..conftest import SMALL

    train = synthetic_root / "dots" / "train" / "good"
    detector = PatchCore(**SMALL, calibration_share=0.0, stages=(8, 16, 32)).fit(train)
    path = tmp_path / "three.safetensors"
    detector.save(path)
    loaded = load(path)
    assert loaded.stages == (8, 16, 32)
    images = synthetic_root / "dots" / "test"
    np.testing.assert_array_equal(loaded.predict(images).image_scores, detector.predict(images).image_scores)
    folder = export(loaded, tmp_path / "onnx", "onnx")
    np.testing.assert_allclose(load(folder).predict(images).image_scores, detector.predict(images).image_scores,
                               rtol=1e-4)
    arrays, config = read_model(path)
    del config["params"]["features"]["params"]["stages"]  # as written before stages were a parameter
    older = tmp_path / "older.safetensors"
    write_model(older, arrays, config)
    assert load(older).stages == (8, 16)
