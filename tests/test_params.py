"""Parameter objects: nested parameters, one validation table, JSON round trip; the detector's use of them."""

import numpy as np
import pytest

from tailedcore import PatchCore, SoftPatch, TailedCore, load
from tailedcore.memory import ModelFileError, write_model
from tailedcore.params import Interval, OneOf, Params
from tailedcore.policies import Coreset, LOFFilter, SoftPatchPolicy, TailCoreset, TailedCorePolicy
from tailedcore.settings import Calibration, Features, Run, Search
from tailedcore.tail import LinkageTailSampler, PaperTailSampler


def test_nested_parameters_read_and_change_as_in_scikit_learn():
    policy = TailedCorePolicy()
    params = policy.get_params(deep=True)
    assert params["lof__k"] == 6 and params["tail__distance"] == 0.3 and params["coreset__ratio"] == 0.1
    changed = policy.with_params(lof__k=3, tail=PaperTailSampler(), tail__share=0.2)
    assert changed.lof == LOFFilter(3, 0.15, "product", "gated", 0.9) and changed.tail == PaperTailSampler(share=0.2)
    assert policy.lof.k == 6  # parameter objects are values: the original is untouched
    with pytest.raises(ValueError, match="TailedCorePolicy has no parameter 'lof_k'"):
        policy.with_params(lof_k=3)
    with pytest.raises(ValueError, match="Coreset.ratio has no nested parameters"):
        policy.with_params(coreset__ratio__x=1)


@pytest.mark.parametrize("policy, message", [
    (TailedCorePolicy(coreset=Coreset(0.0)), r"Coreset.ratio=0.0: must be in \(0, 1\]"),
    (SoftPatchPolicy(lof=LOFFilter(k=0)), r"LOFFilter.k=0: must be in \[1, inf\]"),
    (SoftPatchPolicy(lof=LOFFilter(drop=1.0)), r"LOFFilter.drop=1.0: must be in \[0, 1\)"),
    (SoftPatchPolicy(lof=LOFFilter(k=2.5)), "LOFFilter.k=2.5: must be an integer"),
    (TailedCorePolicy(lof=LOFFilter(scale="class")), "LOFFilter.scale='class': choose from global, image"),
    (TailedCorePolicy(tail_coreset=TailCoreset(max_rows=0)), "TailCoreset.max_rows=0: must be in .* or None"),
    (TailedCorePolicy(tail=LinkageTailSampler(distance=float("nan"))), "distance=nan: must be finite"),
    (TailedCorePolicy(lof=LOFFilter(unlike_share=1.0)), r"LOFFilter.unlike_share=1.0: must be in \(0, 1\) or None"),
])
def test_every_parameter_is_checked_before_any_image_is_read(policy, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        (TailedCore if isinstance(policy, TailedCorePolicy) else SoftPatch)(policy).fit(tmp_path / "missing")


@pytest.mark.parametrize("params, message", [
    ({"crop": 8}, r"PatchCore.features.crop=8: must be in \[16, inf\]"),
    ({"calibration_share": 1.0}, r"PatchCore.calibration.share=1.0: must be in \[0, 1\)"),
    ({"search": "annoy"}, "PatchCore.search.kind='annoy': choose from exact"),
    ({"false_alarm_rate": 0.0}, "PatchCore.calibration.false_alarm_rate=0.0"),
])
def test_pipeline_parameters_are_checked_too(params, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        PatchCore(**params).fit(tmp_path / "missing")


def test_a_policy_of_another_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="policy: expected a Policy, got LOFFilter"):
        SoftPatch(LOFFilter()).fit(tmp_path / "missing")


def test_config_round_trip_names_only_registered_classes():
    policy = TailedCorePolicy(lof=LOFFilter(4, 0.1, "image"), tail=PaperTailSampler(keep=0.8),
                              tail_coreset=TailCoreset("two-round"))
    assert Params.from_config(policy.to_config()) == policy
    # A model file written before LOFFilter had a scale keeps the paper's head step.
    assert Params.from_config({"type": "LOFFilter", "params": {"k": 6, "drop": 0.15}}) == LOFFilter(scale="global")
    with pytest.raises(ValueError, match="unknown parameter object 'os.system'"):
        Params.from_config({"type": "os.system", "params": {}})


def test_interval_text():
    assert Interval(float, 0.0, 1.0, "neither").problem(1.0) == "must be in (0, 1)"
    assert Interval(int, 1).problem(True) == "must be an integer"
    assert Interval(int, 1, none_ok=True).problem(None) is None


def test_a_switch_takes_true_or_false_only():
    """1 == True and 0 == False in Python: a switch must still refuse numbers, or Search(squared_distance=1)
    would pass and be written into the model's config."""
    switch = OneOf((True, False))
    assert switch.problem(True) is None and switch.problem(np.bool_(False)) is None
    assert switch.problem(1) == "must be True or False" and switch.problem(0.0) == "must be True or False"
    with pytest.raises(ValueError, match="squared_distance=1: must be True or False"):
        Search(squared_distance=1).check()
    assert OneOf(("exact", "ivf")).problem("hnsw") == "choose from exact, ivf"


def test_detector_nested_parameters_reach_the_policy():
    detector = TailedCore().set_params(policy__lof__k=3, search="ivf")
    assert detector.policy.lof.k == 3 and detector.search.kind == "ivf"
    assert detector.get_params()["policy__lof__k"] == 3 and "policy__tail__distance" in detector.get_params()
    with pytest.raises(ValueError, match="TailedCorePolicy has no parameter 'lof_k'"):
        detector.set_params(policy__lof_k=3)
    assert not hasattr(TailedCore(), "memory_")  # fitted state exists only after fit (or load)


def test_format_1_model_files_with_flat_policy_parameters_still_load(tmp_path):
    memory = np.ones((4, 8), np.float32)
    flat = {"backbone": "efficientnet-lite0", "resize": 80, "crop": 64, "coreset_ratio": 0.2, "lof_k": 4,
            "lof_drop": 0.1, "tail_estimator": "linkage", "tail_keep": 0.85, "tail_share": 0.15,
            "tail_distance": 0.3, "max_tail_class": 19, "view_step_degrees": 30.0, "view_flip": False,
            "max_tail_rows": None, "tail_coreset": "per-image", "seed": 2}
    path = tmp_path / "old.safetensors"
    write_model(path, {"memory": memory}, {"method": "tailedcore", "params": flat})
    detector = load(path)
    assert detector.policy == TailedCorePolicy(Coreset(0.2), LOFFilter(4, 0.1), LinkageTailSampler(distance=0.3),
                                               tail_coreset=TailCoreset("per-image"),
                                               views=detector.policy.views)
    assert detector.policy.views.step_degrees == 30.0 and detector.policy.views.flip is False
    assert detector.seed == 2 and detector.resize == 80
    write_model(path, {"memory": memory}, {"method": "softpatch", "params": {"lof_k": 5}})
    assert load(path).policy == SoftPatchPolicy(lof=LOFFilter(k=5))


def test_format_3_model_files_with_flat_settings_load_into_the_parameter_objects(tmp_path):
    policy = TailedCorePolicy(lof=LOFFilter(k=4))
    flat = {"backbone": "efficientnet-lite0", "resize": 80, "crop": 64, "search": "ivf",
            "search_options": {"nprobe": 4}, "search_scope": "global", "calibration_share": 0.0,
            "calibration_scope": "global", "unknown_factor": None,
            "blur_sigma": 2.0, "progress": False, "seed": 3, "policy": policy.to_config()}
    path = tmp_path / "format3.safetensors"
    write_model(path, {"memory": np.ones((4, 8), np.float32)}, {"method": "tailedcore", "params": flat})
    detector = load(path, search="exact")
    assert detector.policy == policy and detector.seed == 3
    assert detector.features == Features(resize=80, crop=64)
    assert detector.search == Search(blur_sigma=2.0)  # the new kind dropped the options of the old one
    assert detector.calibration == Calibration(share=0.0, scope="global", unknown_factor=None)
    assert detector.run.progress is False
    flat["colour"] = "blue"
    write_model(path, {"memory": np.ones((4, 8), np.float32)}, {"method": "tailedcore", "params": flat})
    with pytest.raises(ModelFileError, match=r"unknown parameters \['colour'\]"):
        load(path)


def test_a_model_file_with_invalid_thresholds_or_no_memory_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    write_model(path, {"memory": np.ones((4, 8), np.float32)},
                {"method": "patchcore", "params": {}, "thresholds": {"pixel": 1.0}})
    with pytest.raises(ModelFileError, match=r"broken\.safetensors: invalid thresholds"):
        load(path)
    write_model(path, {"memory": np.ones((4, 8), np.float32)},
                {"method": "patchcore", "params": {}, "product_thresholds": {"0": {"image": 1.0}}})
    with pytest.raises(ModelFileError, match=r"broken\.safetensors: invalid thresholds"):
        load(path)
    write_model(path, {"weights": np.ones(4, np.float32)}, {"method": "patchcore", "params": {}})
    with pytest.raises(ModelFileError, match=r"broken\.safetensors: no memory array"):
        load(path)


def test_flat_keyword_arguments_are_a_shorthand_for_the_parameter_objects():
    detector = PatchCore(crop=192, search="ivf", search_options={"nprobe": 4}, false_alarm_rate=0.05, threads=1)
    assert detector.features.crop == 192 == detector.crop
    assert detector.search == Search(kind="ivf", options={"nprobe": 4})
    assert detector.calibration.false_alarm_rate == 0.05 and detector.run.threads == 1
    assert PatchCore(features=Features(crop=192)).get_params() == PatchCore(features__crop=192).get_params()
    assert detector.set_params(search="exact").search.options is None
    with pytest.raises(ValueError, match="unknown parameter: colour"):
        PatchCore(colour="blue")
    with pytest.raises(AttributeError, match="has no attribute 'colour'"):
        _ = detector.colour


def test_search_options_that_the_search_does_not_take_are_refused_before_the_fit(tmp_path):
    with pytest.raises(ValueError, match=r"PatchCore.search.options: 'nprobe' does not apply to search 'exact' "
                                         r"\(it takes memory_block, query_block\)"):
        PatchCore(search="exact", search_options={"nprobe": 16}).fit(tmp_path / "missing")
    PatchCore(search="ivf-batched", search_options={"nprobe": 16, "rerank": 2}).check_params()
    PatchCore(search="ivf-batched", search_options={"nprobe": 16, "rerank": 4, "ranking_dim": 256}).check_params()


@pytest.mark.parametrize("kind, option, accepted", [("flat", "nprobe", "nothing"),
                                                    ("ivf", "ef_search", "nlist, nlist_factor, nprobe, seed"),
                                                    ("hnsw", "nprobe", "hnsw_m, ef_search")])
def test_each_faiss_index_takes_only_its_own_options(kind, option, accepted):
    with pytest.raises(ValueError, match=f"'{option}' does not apply to search '{kind}' \\(it takes {accepted}\\)"):
        PatchCore(search=kind, search_options={option: 8}).check_params()
    PatchCore(search="hnsw", search_options={"hnsw_m": 8, "ef_search": 16}).check_params()
    PatchCore(search="ivf", search_options={"nlist": 64, "nprobe": 16, "seed": 1}).check_params()


def test_none_for_a_settings_object_is_its_default_in_set_params_as_in_the_constructor():
    detector = PatchCore(crop=192, search="ivf").set_params(search=None, features=None)
    assert detector.search == Search() and detector.features == Features()


def _saved_config(tmp_path, edit) -> str:
    """A model file whose parameters ``edit`` changed, written with a valid checksum."""
    path = tmp_path / "edited.safetensors"
    config = {"method": "patchcore", "params": PatchCore().params_config()}
    config["params"].pop("run")
    edit(config["params"])
    write_model(path, {"memory": np.ones((4, 8), np.float32)}, config)
    return path


def test_a_format_4_file_names_only_the_saved_objects_each_of_its_kind(tmp_path):
    assert load(_saved_config(tmp_path, lambda params: None)).features == Features()
    with pytest.raises(ModelFileError, match=r"edited.safetensors: unknown parameters \['run'\]"):
        load(_saved_config(tmp_path, lambda params: params.update(run=Run().to_config())))
    with pytest.raises(ModelFileError, match="edited.safetensors: features is a Search, not a Features"):
        load(_saved_config(tmp_path, lambda params: params.update(features=Search().to_config())))
    with pytest.raises(ModelFileError, match="invalid parameters"):
        load(_saved_config(tmp_path, lambda params: params["search"]["params"].update(colour="blue")))


def test_load_takes_run_time_settings_by_name_not_whole_objects(tmp_path):
    path = _saved_config(tmp_path, lambda params: params["features"]["params"].update(crop=192))
    assert load(path, batch_size=4, features__precision="bfloat16").features == Features(
        crop=192, batch_size=4, precision="bfloat16")
    with pytest.raises(ValueError, match="load: give the parameters of features by name"):
        load(path, features=Features(batch_size=4))


def test_a_settings_group_given_as_text_is_refused_with_what_to_give():
    with pytest.raises(ValueError, match=r"policy='softpatch': give a settings object, or its fields as policy__"):
        TailedCore().set_params(policy="softpatch")


def test_bad_mean_patch_features_are_named_as_such():
    from tailedcore.tail import LinkageTailSampler, TailInputs

    embeddings = np.ones((3, 4))
    mean_patches = np.ones((3, 5))
    mean_patches[1, 2] = np.nan
    with pytest.raises(ValueError, match="mean_patches: contain NaN"):
        LinkageTailSampler().estimate(TailInputs(embeddings, mean_patches))
