"""What the commands write: the usual permissions on every file, checked exports, no silent replacing,
outputs checked before any work, and errors that name the user's path."""

import logging
import os
import stat

import numpy as np
import pytest
from PIL import Image

from tailedcore import PatchCore, load
from tailedcore._io import atomic_write_bytes
from tailedcore.app.cli import main
from tailedcore.data import ImageLoadError
from tailedcore.memory import ModelFileError

from ..conftest import SMALL, SMALL_OPTIONS, require_openvino


def modes_below(root):
    """{relative path: permission bits} of every file and folder below ``root`` (root included)."""
    found = {".": stat.S_IMODE(root.stat().st_mode)} if root.is_dir() else {}
    for path in [root] if root.is_file() else root.rglob("*"):
        found[str(path.relative_to(root.parent if root.is_file() else root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_every_file_every_command_writes_has_the_usual_permissions(synthetic_root, tmp_path):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "out"
        model = out / "model.safetensors"
        normal = str(synthetic_root / "checker" / "test" / "good")
        commands = [
            ["fit", str(synthetic_root), "--method", "patchcore", "--out", str(model), *SMALL_OPTIONS],
            ["calibrate", str(model), "--normal", normal],
            ["calibrate", str(model), "--normal", normal, "--out", str(out / "calibrated.safetensors")],
            ["export", str(model), "--format", "onnx", "--out", str(out / "onnx"), "--int8-calibration", normal],
            ["export", str(model), "--format", "openvino", "--out", str(out / "openvino")],
            ["predict", str(model), normal, "--out", str(out / "predictions")],
            ["predict", str(out / "onnx"), normal, "--out", str(out / "predictions-onnx")],
            ["evaluate", str(model), str(synthetic_root), "--out", str(out / "evaluation")],
            ["make-nlt", str(synthetic_root), "--dest", str(out / "nlt"), "--profile", "step-k1", "--copy"],
            ["benchmark", str(out / "nlt"), "--methods", "patchcore", "--out", str(out / "bench"), *SMALL_OPTIONS],
        ]
        for command in commands:
            assert main(["--quiet", *command]) == 0, command
        load(model).save(out / "saved.safetensors")
    finally:
        os.umask(previous)
    modes = modes_below(out)
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (out / name).is_dir() else 0o644)}
    assert not wrong
    # Every kind of output is in the walk.
    for name in ("model.safetensors", "calibrated.safetensors", "saved.safetensors", "onnx/features.onnx",
                 "onnx/features-int8.onnx", "onnx/model.safetensors", "openvino/features.bin",
                 "predictions/scores.csv", "evaluation/report.html", "bench/results.json"):
        assert name in modes, name


@pytest.mark.parametrize("fmt, graph", [("onnx", "features.onnx"), ("openvino", "features.bin")])
def test_a_damaged_export_is_refused_in_one_line(cli_model, synthetic_root, tmp_path, capsys, fmt, graph):
    if fmt == "openvino":
        require_openvino()
    folder = tmp_path / fmt
    assert main(["--quiet", "export", str(cli_model), "--format", fmt, "--out", str(folder)]) == 0
    assert load(folder, progress=False).predict(synthetic_root / "checker" / "test" / "good").paths
    data = bytearray((folder / graph).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    (folder / graph).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{graph}: damaged"):
        load(folder)
    assert main(["--quiet", "predict", str(folder), str(synthetic_root), "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{graph}: damaged" in err[0]
    (folder / graph).unlink()
    with pytest.raises(ValueError, match=f"{graph}: missing"):
        load(folder)


def test_an_export_without_digests_loads_with_a_warning(cli_model, synthetic_root, tmp_path, caplog):
    import json

    folder = tmp_path / "old"
    assert main(["--quiet", "export", str(cli_model), "--format", "onnx", "--out", str(folder)]) == 0
    info = json.loads((folder / "export.json").read_text())
    del info["sha256"]
    (folder / "export.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        load(folder)
    assert any("without file digests" in record.getMessage() for record in caplog.records)


def test_fit_refuses_to_replace_a_model_without_overwrite(cli_model, synthetic_root, tmp_path, capsys):
    before = cli_model.read_bytes()
    assert main(["--quiet", "fit", str(synthetic_root), "--method", "patchcore", "--out", str(cli_model),
                 *SMALL_OPTIONS]) == 1
    assert "already exists (use --overwrite" in capsys.readouterr().err and cli_model.read_bytes() == before
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(before)
    assert main(["--quiet", "fit", str(synthetic_root), "--method", "patchcore", "--out", str(copy),
                 *SMALL_OPTIONS, "--overwrite", "--seed", "1"]) == 0
    assert copy.read_bytes() != before
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"x")
    assert main(["--quiet", "calibrate", str(cli_model), "--normal", str(synthetic_root), "--out", str(other)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_evaluate_refuses_a_used_folder_and_replaces_only_an_evaluation(cli_model, synthetic_root, tmp_path, capsys):
    predictions = tmp_path / "predictions"
    assert main(["--quiet", "predict", str(cli_model), str(synthetic_root / "dots"), "--out", str(predictions)]) == 0
    evaluation = ["--quiet", "evaluate", str(cli_model), str(synthetic_root), "--out"]
    assert main([*evaluation, str(predictions)]) == 1
    assert "not empty (use --overwrite" in capsys.readouterr().err
    assert main([*evaluation, str(predictions), "--overwrite"]) == 1
    assert "only a previous evaluation folder" in capsys.readouterr().err
    assert not (predictions / "metrics.json").exists()
    out = tmp_path / "evaluation"
    assert main([*evaluation, str(out)]) == 0
    (out / "stray.txt").write_text("from an earlier run")
    assert main([*evaluation, str(out)]) == 1
    assert main([*evaluation, str(out), "--overwrite"]) == 0
    assert (out / "metrics.json").is_file() and not (out / "stray.txt").exists()  # replaced as a whole


def _fit_must_not_run(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the fit started before the output was checked")

    monkeypatch.setattr("tailedcore.detector.Detector.fit", refuse)


def test_an_unwritable_out_is_refused_before_any_work(synthetic_root, tmp_path, capsys, monkeypatch):
    _fit_must_not_run(monkeypatch)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    fit = ["--quiet", "fit", str(synthetic_root), "--method", "patchcore", *SMALL_OPTIONS, "--out"]
    assert main([*fit, str(folder)]) == 1
    assert f"{folder}: is a folder, not a file" in capsys.readouterr().err
    assert main([*fit, str(a_file / "m.safetensors")]) == 1
    err = capsys.readouterr().err
    assert f"{a_file / 'm.safetensors'}: cannot be written" in err and ".tmp" not in err
    assert main(["--quiet", "predict", str(tmp_path / "m.safetensors"), str(synthetic_root),
                 "--out", str(a_file / "p")]) == 1
    assert f"{a_file / 'p'}: cannot be written" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(synthetic_root, tmp_path, capsys, monkeypatch):
    _fit_must_not_run(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["--quiet", "fit", str(synthetic_root), "--out", str(locked / "m.safetensors")]) == 1
    finally:
        locked.chmod(0o755)
    assert f"{locked / 'm.safetensors'}: cannot be written" in capsys.readouterr().err


def test_a_failed_write_names_the_users_path_not_the_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tailedcore._io.os.fsync", no_space)
    with pytest.raises(OSError) as error:
        atomic_write_bytes(target, b"x" * 10)
    assert str(target) in str(error.value) and ".tmp" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_model_file_is_called_damaged_or_truncated(cli_model, tmp_path, capsys):
    data = cli_model.read_bytes()
    for keep in (len(data) - 100, 200, 12):
        cut = tmp_path / f"cut-{keep}.safetensors"
        cut.write_bytes(data[:keep])
        with pytest.raises(ModelFileError, match="damaged or truncated"):
            load(cut)
    assert main(["--quiet", "predict", str(cut), str(tmp_path), "--out", str(tmp_path / "p")]) == 1
    assert "damaged or truncated" in capsys.readouterr().err


def test_fit_warns_about_tiny_images_and_strict_refuses_them(synthetic_root, tmp_path, caplog, capsys):
    images = tmp_path / "train"
    images.mkdir()
    for index, path in enumerate(sorted((synthetic_root / "stripes" / "train" / "good").iterdir())[:4]):
        (images / f"{index}.png").write_bytes(path.read_bytes())
    Image.fromarray(np.full((12, 12, 3), 128, np.uint8)).save(images / "tiny.png")
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        PatchCore(**SMALL, calibration_share=0.0).fit(images)
    assert any("tiny.png: 12x12 image upscaled" in record.getMessage() for record in caplog.records)
    with pytest.raises(ImageLoadError, match="tiny.png: 12x12 image upscaled"):
        PatchCore(**SMALL, calibration_share=0.0).fit(images, strict=True)
    assert main(["--quiet", "fit", str(images), "--method", "patchcore", "--out", str(tmp_path / "m.safetensors"),
                 *SMALL_OPTIONS, "--strict"]) == 1
    assert "tiny.png: 12x12 image upscaled" in capsys.readouterr().err
