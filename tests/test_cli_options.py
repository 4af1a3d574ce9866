"""The command line's policy options: defaults read from the building blocks, nested parameters out."""

import numpy as np
import pytest

from tailedcore import PatchCore
from tailedcore.app.cli import _detector_params, build_parser, main
from tailedcore.memory import MemoryBank, read_model
from tailedcore.policies import LOFFilter, TailedCorePolicy
from tailedcore.tail import LinkageTailSampler, PaperTailSampler


def _parse(*argv):
    return build_parser().parse_args(["fit", "data", "--out", "m.safetensors", *argv])


def test_help_shows_the_defaults_of_the_signatures(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"LOF neighbours (softpatch, tailedcore); default {LOFFilter().k}" in text
    assert f"trim share (tailedcore, paper estimator); default {PaperTailSampler().keep}" in text
    assert f"cuts linkage clusters (tailedcore); default {LinkageTailSampler().distance}" in text
    assert f"default {TailedCorePolicy().tail.name}" in text


def test_options_become_nested_policy_parameters():
    _, policy = _detector_params(_parse("--lof-k", "3", "--tail-estimator", "paper", "--tail-keep", "0.8",
                                        "--coreset-ratio", "0.2", "--max-tail-rows", "100"))
    assert policy == {"policy__lof__k": 3, "policy__coreset__ratio": 0.2, "policy__tail_coreset__max_rows": 100,
                      "policy__tail": PaperTailSampler(keep=0.8)}
    _, policy = _detector_params(_parse("--lof-scale", "image"))
    assert policy == {"policy__lof__scale": "image"}
    with pytest.raises(SystemExit):
        _parse("--lof-scale", "class")
    _, policy = _detector_params(_parse("--tail-distance", "0.3"))
    assert policy == {"policy__tail": LinkageTailSampler(distance=0.3)}
    params, policy = _detector_params(_parse("--method", "patchcore"))
    assert policy == {} and params["resize"] == 256


@pytest.mark.parametrize("argv", [
    ["--tail-keep", "0.8"],  # the default linkage estimator has no trim share
    ["--tail-estimator", "paper", "--tail-distance", "0.3"],
    ["--method", "softpatch", "--max-tail-rows", "10"],
    ["--method", "patchcore", "--lof-drop", "0.1"],
])
def test_an_option_that_does_not_apply_is_a_usage_error(argv, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["fit", str(tmp_path), "--out", str(tmp_path / "m"), *argv])
    assert info.value.code == 2


def test_engine_options_reach_the_detector_and_stay_out_of_the_model_file(tmp_path):
    params, policy = _detector_params(_parse("--engine", "ray", "--ray-address", "10.0.0.5:6379",
                                             "--exact-coreset-rows", "50000"))
    assert params["engine"] == "ray" and params["ray_address"] == "10.0.0.5:6379"
    assert policy == {"policy__coreset__exact_rows": 50000}
    with pytest.raises(SystemExit) as info:
        main(["fit", str(tmp_path), "--out", str(tmp_path / "m"), "--engine", "spark"])
    assert info.value.code == 2
    detector = PatchCore(engine="ray", ray_address="10.0.0.5:6379")
    detector.memory_, detector.thresholds_, detector.training_summary_ = MemoryBank(np.ones((2, 4))), None, {}
    detector.save(tmp_path / "m.safetensors")
    saved = read_model(tmp_path / "m.safetensors")[1]["params"]
    assert "engine" not in saved and "ray_address" not in saved and saved["resize"] == 256


def test_store_dtype_option_reaches_the_detector():
    params, _ = _detector_params(_parse("--store-dtype", "float16"))
    assert params["store_dtype"] == "float16"
    assert _detector_params(_parse())[0]["store_dtype"] == "float32"
