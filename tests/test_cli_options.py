"""The command line's policy options: defaults read from the building blocks, nested parameters out."""

import dataclasses

import numpy as np
import pytest

from tailedcore import PatchCore, TailedCore
from tailedcore.app.cli import build_parser, main
from tailedcore.app.commands import detector_params
from tailedcore.app.options import POLICY_OPTIONS, SETTING_OPTIONS
from tailedcore.memory import MemoryBank, read_model
from tailedcore.policies import Coreset, LOFFilter, SoftPatchPolicy, TailCoreset, TailedCorePolicy, Views
from tailedcore.settings import SETTINGS, TopLevel
from tailedcore.tail import TAIL_ESTIMATORS, LinkageTailSampler, PaperTailSampler


def _parse(*argv):
    return build_parser().parse_args(["fit", "data", "--out", "m.safetensors", *argv])


def test_help_shows_the_defaults_of_the_signatures(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no line breaks inside an option's name
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"LOF neighbours (softpatch, tailedcore); default {LOFFilter().k}" in text
    assert f"trim share (tailedcore, with --tail-estimator paper); default {PaperTailSampler().keep}" in text
    assert (f"cuts linkage clusters (tailedcore, with --tail-estimator linkage); default "
            f"{LinkageTailSampler().distance}") in text
    assert f"(the published TailSampler) (tailedcore); default {TailedCorePolicy().tail.name}" in text
    # one option, two methods whose default blocks differ: each method's default is stated
    assert "(softpatch, tailedcore); default global (softpatch), product (tailedcore)" in text
    assert "(softpatch, tailedcore); default fixed (softpatch), gated (tailedcore)" in text


def test_tailedcore_heads_with_the_gated_drop_and_keeps_the_papers_step_by_name():
    assert TailedCorePolicy().lof == LOFFilter(scale="product", share="gated", unlike_share=0.9)
    assert TailedCorePolicy().unlike_tail
    assert SoftPatchPolicy().lof == LOFFilter()  # SoftPatch's own step is the paper's
    _, policy = detector_params(_parse("--lof-scale", "global", "--lof-share", "fixed", "--lof-unlike-share", "none"))
    assert TailedCore().set_params(**policy).policy.lof == LOFFilter()


def test_options_become_nested_policy_parameters():
    _, policy = detector_params(_parse("--lof-k", "3", "--tail-estimator", "paper", "--tail-keep", "0.8",
                                        "--coreset-ratio", "0.2", "--max-tail-rows", "100"))
    assert policy == {"policy__lof__k": 3, "policy__coreset__ratio": 0.2, "policy__tail_coreset__max_rows": 100,
                      "policy__tail": PaperTailSampler(), "policy__tail__keep": 0.8}
    assert TailedCore().set_params(**policy).policy.tail == PaperTailSampler(keep=0.8)
    _, policy = detector_params(_parse("--lof-scale", "image", "--lof-share", "fence"))
    assert policy == {"policy__lof__scale": "image", "policy__lof__share": "fence"}
    with pytest.raises(SystemExit):
        _parse("--lof-scale", "class")
    _, policy = detector_params(_parse("--tail-distance", "0.3"))
    assert TailedCore().set_params(**policy).policy.tail == LinkageTailSampler(distance=0.3)
    params, policy = detector_params(_parse("--method", "patchcore", "--crop", "192"))
    assert policy == {} and params["features__crop"] == 192 and "features__resize" not in params


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
    params, policy = detector_params(_parse("--engine", "ray", "--ray-address", "10.0.0.5:6379",
                                             "--exact-coreset-rows", "50000"))
    assert params["run__engine"] == "ray" and params["run__ray_address"] == "10.0.0.5:6379"
    assert policy == {"policy__coreset__exact_rows": 50000}
    with pytest.raises(SystemExit) as info:
        main(["fit", str(tmp_path), "--out", str(tmp_path / "m"), "--engine", "spark"])
    assert info.value.code == 2
    detector = PatchCore(engine="ray", ray_address="10.0.0.5:6379")
    detector.memory_, detector.thresholds_, detector.training_summary_ = MemoryBank(np.ones((2, 4))), None, {}
    detector.save(tmp_path / "m.safetensors")
    saved = read_model(tmp_path / "m.safetensors")[1]["params"]
    assert "run" not in saved and saved["features"]["params"]["resize"] == 256


def test_store_dtype_option_reaches_the_detector():
    params, _ = detector_params(_parse("--store-dtype", "float16"))
    assert PatchCore().set_params(**params).features.store_dtype == "float16"
    assert PatchCore().set_params(**detector_params(_parse())[0]).features.store_dtype == "float32"


POLICY_BLOCKS = {"coreset": Coreset, "lof": LOFFilter, "views": Views, "tail_coreset": TailCoreset}


def _parser_options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(action for action in parser._actions if hasattr(action, "choices") and action.choices)
    return {flag for action in sub.choices[command]._actions for flag in action.option_strings}


def test_every_setting_and_policy_option_comes_from_a_parameter_class():
    """The parser's parameter options are exactly the fields that carry an option, and each reaches its
    field: a new field with an option is a new option, with no other line to write. The seed, the tail
    estimator's class and the process-wide --threads are fields like the others."""
    owners = {"": TopLevel, **SETTINGS, "policy": TailedCorePolicy,
              **{f"policy__{block}": cls for block, cls in POLICY_BLOCKS.items()}}
    owners.update({f"policy__tail {name}": cls for name, cls in TAIL_ESTIMATORS.items()})
    targets = {f"{owner.partition(' ')[0]}__{field.name}".lstrip("_") for owner, cls in owners.items()
               for field in dataclasses.fields(cls)
               if field.metadata.get("help") and field.metadata["option"] is not None}
    assert {"seed", "policy__tail", "run__threads"} <= targets
    options = SETTING_OPTIONS + POLICY_OPTIONS
    assert sorted(option.target for option in options) == sorted(targets)
    general = {"-h", "--help", "--method", "--out", "--cache", "--overwrite", "--strict", "--stage-times",
               "--calibration", "--debug", "--quiet"}
    assert _parser_options("fit") - general == {option.flag for option in options}
    run_options = {option.flag for option in SETTING_OPTIONS if option.at == "run"}
    assert run_options <= _parser_options("predict") and "--crop" not in _parser_options("predict")
    for option in options:  # each option's value reaches its field
        value = {"--stages": ["8"], "--search-option": "nprobe=4"}.get(option.flag)
        constraint = option.owner.constraints.get(option.field.name)
        if value is None:
            value = (list(option.choices)[-1] if option.choices else
                     str(constraint.options[-1]).lower() if hasattr(constraint, "options") else
                     "1" if getattr(constraint, "kind", None) is int else "0.5" if constraint else "x")
        estimator = ["--tail-estimator", "paper"] if option.owner is PaperTailSampler else []
        args = _parse(*estimator, option.flag, *([value] if isinstance(value, str) else value))
        params, policy = detector_params(args)
        detector = TailedCore().set_params(**params).set_params(**policy)
        assert option.target in detector.get_params(), option.flag
        assert detector.get_params()[option.target] is not None or value == "none", option.flag


def test_the_demo_takes_its_reduced_sizes_unless_given(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("tailedcore.bench.demo.run_demo", lambda *args, **kwargs: calls.append(kwargs) or "table")
    assert main(["--quiet", "demo", "--out", str(tmp_path)]) == 0
    assert main(["--quiet", "demo", "--out", str(tmp_path), "--crop", "128"]) == 0
    assert [(call["resize"], call["crop"]) for call in calls] == [(160, 144), (160, 128)]


def test_a_boolean_field_becomes_an_option_of_true_or_false():
    import argparse

    from tailedcore.app.options import Option

    flip = next(field for field in dataclasses.fields(Views) if field.name == "flip")
    parser = argparse.ArgumentParser()
    Option("--view-flip", "policy__views__flip", Views, flip).add_to(parser)
    assert parser.parse_args(["--view-flip", "False"]).view_flip is False
    assert "view_flip" not in vars(parser.parse_args([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--view-flip", "maybe"])


def test_the_benchmark_has_no_option_it_would_ignore_and_run_settings_state_their_own_defaults(capsys):
    for option, value in (("--runtime", "onnx"), ("--false-alarm-rate", "0.05"), ("--calibration-scope", "global")):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["benchmark", "data", "--out", "o", option, value])
        assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "same result; needs pip install 'tailedcore[ray]'); default local" in text
    assert "images per backbone batch; default the model's" in text
