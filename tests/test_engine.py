"""The Ray engine on a real local Ray cluster (not a mock): the same features, LOF scores, memory bank
and test scores as the local engine, also when workers die mid-task."""

import os

import numpy as np
import pytest

from tailedcore import PatchCore, SoftPatch, TailedCore
from tailedcore.data import ImageLoadError
from tailedcore.engine import FAULT_FOLDER, LocalEngine, make_engine
from tailedcore.lof import patchwise_lof_scores
from tailedcore.sampling import two_round_coreset
from tailedcore.scoring import ExactSearch, ShardedSearch

from .conftest import real_subset

TRAIN = {"bottle": 10, "pcb": 4, "screw": 1}
# Composable coreset settings (the same on both engines): shards of 200 projected rows.
PARAMS = {"resize": 72, "crop": 64, "progress": False, "batch_size": 4, "calibration_share": 0.0}
COMPOSABLE = {"policy__coreset__exact_rows": 200}


@pytest.fixture(scope="module")
def ray_engine(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tailedcore[ray]')")
    faults = tmp_path_factory.mktemp("faults")
    os.environ[FAULT_FOLDER] = str(faults)  # inherited by the workers; inert until the fault test arms it
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as error:  # noqa: BLE001 - any failure to start means: skip, with its reason
        pytest.skip(f"Ray cannot start here: {error}")
    engine = make_engine("ray")
    engine.faults = faults
    yield engine
    ray.shutdown()
    del os.environ[FAULT_FOLDER]


@pytest.fixture(scope="module")
def real_train():
    return real_subset(TRAIN, 1)


def test_the_engine_is_a_ray_cluster_of_two_workers(ray_engine):
    assert ray_engine.name == "ray" and ray_engine.workers == 2
    assert ray_engine.map(pow, [(2, 3), (3, 2)]) == [8, 9]


def test_lof_coreset_and_search_tasks_match_one_process(ray_engine):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((12, 30, 8)).astype(np.float32)
    np.testing.assert_array_equal(patchwise_lof_scores(features, 4, engine=ray_engine),
                                  patchwise_lof_scores(features, 4))
    x = rng.standard_normal((900, 8)).astype(np.float32)
    shards = np.array_split(np.arange(900), 7)
    np.testing.assert_array_equal(
        two_round_coreset(x, shards, 0.1, np.random.default_rng(3), block_rows=200, engine=ray_engine),
        two_round_coreset(x, shards, 0.1, np.random.default_rng(3), block_rows=200))
    memory, queries = x[:700], rng.standard_normal((50, 8)).astype(np.float32)
    sharded = ShardedSearch(memory, ray_engine, memory_block=64)
    assert len(sharded.shards) == 2
    for got, want in zip(sharded.search(queries), ExactSearch(memory, memory_block=64).search(queries)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cls", [PatchCore, SoftPatch, TailedCore])
def test_both_engines_fit_the_same_model(cls, ray_engine, real_train):
    train, test = real_train
    local = cls(**PARAMS).set_params(**COMPOSABLE).fit(train)
    remote = cls(**PARAMS, engine="ray").set_params(**COMPOSABLE).fit(train)
    assert remote.memory_.info == local.memory_.info and local.memory_.info["patches"] > 200  # composable path
    np.testing.assert_array_equal(remote.memory_.features, local.memory_.features)
    if local.memory_.weights is not None:  # SoftPatch: the LOF scores of the picks
        np.testing.assert_array_equal(remote.memory_.weights, local.memory_.weights)
    for key in ("dropped_share", "tail_indices", "class_sizes"):
        if key in local.diagnostics_:
            np.testing.assert_array_equal(remote.diagnostics_[key], local.diagnostics_[key])
    a, b = local.predict(test), remote.predict(test)
    np.testing.assert_array_equal(a.patch_scores, b.patch_scores)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)


def test_a_worker_dying_mid_task_changes_nothing(ray_engine, real_train):
    train, _ = real_train
    expected = SoftPatch(**PARAMS).set_params(**COMPOSABLE).fit(train).memory_
    (ray_engine.faults / "armed").touch()
    try:
        got = SoftPatch(**PARAMS, engine="ray").set_params(**COMPOSABLE).fit(train).memory_
    finally:
        (ray_engine.faults / "armed").unlink()
    assert (ray_engine.faults / "died").is_file()  # a worker did die mid-task
    np.testing.assert_array_equal(got.features, expected.features)
    np.testing.assert_array_equal(got.weights, expected.weights)


def test_without_ray_the_engine_is_a_one_line_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RuntimeError, match=r"--engine ray needs Ray: pip install 'tailedcore\[ray\]'"):
        make_engine("ray")
    assert isinstance(make_engine("local"), LocalEngine)


def test_batch_prediction_as_tasks_over_image_shards(ray_engine, real_train, tmp_path):
    train, test = real_train
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    images = [*test, broken, *train[:9]]  # shards of whole batches of 4, one unreadable file among them
    detector = SoftPatch(**PARAMS).fit(train)
    local = detector.predict(images)
    remote = detector.set_params(engine="ray").predict(images)
    assert "test shards" in [record.name for record in detector.stage_times_.records]
    assert remote.paths == local.paths and len(remote.paths) == len(images) - 1
    assert [path for path, _ in remote.failures] == [broken] == [path for path, _ in local.failures]
    for name in ("image_scores", "patch_scores", "anomaly_maps", "products", "unknown"):
        np.testing.assert_array_equal(getattr(remote, name), getattr(local, name))
    routed_local = detector.set_params(engine="local", search_scope="product").predict(images)
    routed_remote = detector.set_params(engine="ray", search_scope="product").predict(images)
    np.testing.assert_array_equal(routed_remote.patch_scores, routed_local.patch_scores)
    detector.set_params(search_scope="global")
    with pytest.raises(ImageLoadError, match="broken.png"):
        detector.predict(images, strict=True)


def test_a_served_models_stage_times_stay_one_record_per_stage():
    """A detector that predicts for as long as a server runs keeps totals per stage, not a record per call."""
    from tailedcore.timing import StageTimer

    timer = StageTimer(interval=0.001)
    for _ in range(200):
        with timer.stage("test scoring"):
            pass
        with timer.stage("products"):
            pass
    assert [record.name for record in timer.records] == ["test scoring", "products"]
    (name, seconds, peak_mib), _ = timer.table()
    assert name == "test scoring" and seconds >= 0 and peak_mib > 0


@pytest.mark.parametrize("platform, scale", [("linux", 1024), ("darwin", 1)])
def test_rss_without_proc_reads_the_platforms_unit(monkeypatch, platform, scale):
    """Where /proc is missing the lifetime peak stands in: kilobytes on Linux, bytes on macOS."""
    import types

    from tailedcore import timing

    def no_proc(*args, **kwargs):
        raise OSError("no /proc")

    monkeypatch.setattr(timing, "open", no_proc, raising=False)
    monkeypatch.setattr(timing.sys, "platform", platform)
    monkeypatch.setattr(timing.resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=5000))
    assert timing.current_rss_bytes() == 5000 * scale
