"""Exports: the backbone and patch aggregation as one ONNX / OpenVINO graph; scores from each runtime
agree with torch within 1e-4 relative on real images, through the API and the command line."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tailedcore import PatchCore, load
from tailedcore.app.cli import main
from tailedcore.runtimes import export

from .conftest import require_openvino

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ad"
PARAMS = {"resize": 72, "crop": 64, "progress": False, "batch_size": 4, "calibration_share": 0.0}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    if not REAL.is_dir():
        pytest.skip("real images (../shared/data/real-ad) not present")
    train = sorted((REAL / "bottle" / "train" / "good").iterdir())[:6]
    test = [path for folder in sorted((REAL / "bottle" / "test").iterdir()) for path in sorted(folder.iterdir())[:2]]
    model = tmp_path_factory.mktemp("model") / "model.safetensors"
    PatchCore(**PARAMS).fit(train).save(model)
    return model, test


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_runtime_agrees_with_torch(fitted, fmt, tmp_path):
    if fmt == "openvino":
        require_openvino()
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "openvino")
    model, test = fitted
    folder = export(load(model), tmp_path / fmt, fmt)
    assert json.loads((folder / "export.json").read_text())["format"] == fmt
    reference = load(model).predict(test)
    exported = load(folder)
    assert exported.runtime == fmt
    got = exported.predict(test)
    assert "backbone" not in vars(exported.extractor)  # loading and predicting built no torch backbone
    np.testing.assert_allclose(got.image_scores, reference.image_scores, rtol=1e-4)
    np.testing.assert_allclose(got.anomaly_maps, reference.anomaly_maps, rtol=1e-4,
                               atol=1e-4 * reference.anomaly_maps.max())
    # The same folder with the torch runtime is the model file's model, bit for bit.
    np.testing.assert_array_equal(load(folder, runtime="torch").predict(test).image_scores, reference.image_scores)


def test_cli_export_and_predict_with_a_runtime(fitted, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model, test = fitted
    folder = tmp_path / "export"
    assert main(["--quiet", "export", str(model), "--format", "onnx", "--out", str(folder)]) == 0
    assert main(["--quiet", "export", str(model), "--format", "onnx", "--out", str(folder)]) == 1  # not empty
    assert "exists and is not empty" in capsys.readouterr().err
    out = tmp_path / "pred"
    assert main(["--quiet", "predict", str(folder), str(test[0].parent), "--out", str(out)]) == 0
    assert main(["--quiet", "predict", str(model), str(test[0].parent), "--out", str(tmp_path / "ref")]) == 0
    got = {r["image"]: r["raw_score"] for r in json.loads((out / "scores.json").read_text())}
    want = {r["image"]: r["raw_score"] for r in json.loads((tmp_path / "ref" / "scores.json").read_text())}
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) <= 1e-4 * abs(want[k]) for k in want)
    assert main(["--quiet", "predict", str(model), str(test[0]), "--runtime", "onnx",
                 "--out", str(tmp_path / "x")]) == 1
    assert "load the folder that 'tailedcore export' wrote" in capsys.readouterr().err
    assert main(["--quiet", "predict", str(folder), str(test[0]), "--runtime", "openvino",
                 "--out", str(tmp_path / "y")]) == 1
    assert "holds a onnx export, not a openvino graph" in capsys.readouterr().err


def test_lower_precision_modes_are_each_runtimes_own_and_asked_for(fitted, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    require_openvino()
    import openvino

    model, test = fitted
    train = sorted((REAL / "bottle" / "train" / "good").iterdir())[6:14]
    reference = load(model).predict(test).image_scores
    onnx = export(load(model), tmp_path / "onnx", "onnx", int8_calibration=train)
    assert json.loads((onnx / "export.json").read_text())["int8_graph"] == "features-int8.onnx"
    assert load(onnx).predict(test).image_scores == pytest.approx(reference, rel=1e-4)  # float32 unless asked
    lower = [load(onnx, precision="int8").predict(test).image_scores]
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        bf16 = load(export(load(model), tmp_path / "ov", "openvino"), precision="bfloat16").predict(test).image_scores
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        lower.append(bf16)
    else:  # OpenVINO runs bfloat16 on CPUs with AVX512-BF16 or AMX only; elsewhere float32, and it says so
        assert any("OpenVINO has no bfloat16 on this CPU" in r.getMessage() for r in caplog.records)
        assert bf16 == pytest.approx(reference, rel=1e-4)
    for scores in lower:
        assert not np.allclose(scores, reference, rtol=1e-4)  # really another arithmetic
        np.testing.assert_allclose(scores, reference, rtol=0.25)
    with pytest.raises(ValueError, match="runtime onnx offers float32 or int8"):
        load(onnx, precision="bfloat16")
    with pytest.raises(ValueError, match="torch runtime offers float32 or bfloat16"):
        load(model, precision="int8")
    with pytest.raises(ValueError, match="holds no int8 graph"):
        load(export(load(model), tmp_path / "plain", "onnx"), precision="int8").predict(test)
    bf16_fit = tmp_path / "bf16.safetensors"
    load(model, precision="bfloat16").save(bf16_fit)
    assert load(export(load(bf16_fit), tmp_path / "bf16-onnx", "onnx")).precision == "float32"
    with pytest.raises(ValueError, match="only the onnx format has an int8 graph"):
        export(load(model), tmp_path / "ov-int8", "openvino", int8_calibration=train)
