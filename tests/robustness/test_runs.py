"""One model, one answer: the search a model keeps is its default everywhere; threads in the API;
what serve and --help say; temporary folders of killed runs."""

import argparse
import json
import logging
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from threadpoolctl import threadpool_info

from tailedcore import PatchCore, load
from tailedcore.app.cli import build_parser, main
from tailedcore.features import FeatureExtractor
from tailedcore.scoring import SERVING_SEARCH

from ..conftest import SMALL


def test_a_model_keeps_its_search_and_every_command_uses_it(cli_model, synthetic_root, tmp_path, monkeypatch,
                                                            caplog):
    detector = load(cli_model)
    assert detector.search_setting == SERVING_SEARCH
    assert detector.thresholds_.search == SERVING_SEARCH  # calibrated with the search it is served with
    served = []
    monkeypatch.setattr("tailedcore.app.serve.serve", lambda detector, *args, **kwargs: served.append(detector))
    assert main(["--quiet", "serve", str(cli_model)]) == 0
    assert served[0].search_setting == SERVING_SEARCH
    images = synthetic_root / "checker" / "test"
    assert main(["--quiet", "predict", str(cli_model), str(images), "--out", str(tmp_path / "p")]) == 0
    printed = {r["image"]: r["raw_score"] for r in json.loads((tmp_path / "p" / "scores.json").read_text())}
    expected = detector.predict(images)
    assert [printed[str(path)] for path in expected.paths] == pytest.approx(expected.image_scores.tolist(), rel=1e-6)
    with caplog.at_level(logging.WARNING, logger="tailedcore"):
        assert main(["--quiet", "predict", str(cli_model), str(images), "--out", str(tmp_path / "e"),
                     "--search", "exact"]) == 0
    assert any("thresholds were calibrated with search ivf-batched (nlist_factor=2 nprobe=12 ranking_dim=256 "
               "rerank=4), scores now come from exact" in record.getMessage() for record in caplog.records)
    assert main(["--quiet", "calibrate", str(cli_model), "--normal", str(images / "good"), "--search", "exact",
                 "--out", str(tmp_path / "exact.safetensors")]) == 0
    exact = load(tmp_path / "exact.safetensors")
    assert exact.thresholds_.search == {"search": "exact", "search_options": {}}
    assert exact.search.kind == "exact"  # --search on calibrate becomes the model's own


def test_the_api_runs_in_its_threads_and_restores_them(synthetic_root, monkeypatch):
    seen = []
    features = FeatureExtractor.features

    def recording(self, *args, **kwargs):
        seen.append((torch.get_num_threads(), {i["user_api"]: i["num_threads"] for i in threadpool_info()}))
        return features(self, *args, **kwargs)

    monkeypatch.setattr(FeatureExtractor, "features", recording)
    before = torch.get_num_threads()
    train = synthetic_root / "dots" / "train" / "good"
    detector = PatchCore(**SMALL, calibration_share=0.0, threads=1).fit(train)
    detector.predict(synthetic_root / "dots" / "test")
    assert seen and all(torch_threads == 1 and set(pools.values()) == {1} for torch_threads, pools in seen)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        PatchCore(threads=0).fit(synthetic_root)


def test_serve_prints_its_url(cli_model):
    command = [sys.executable, "-m", "tailedcore", "--quiet", "serve", str(cli_model), "--port", "0",
               "--search", "exact"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("tailedcore: serving on http://127.0.0.1:")
        url = line.split()[3]
        for _ in range(100):
            try:
                with urllib.request.urlopen(url + "model", timeout=5) as answer:
                    assert json.loads(answer.read())["method"] == "patchcore"
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"{url} did not answer")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_help_states_every_default():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = []
    for name, command in commands.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if (not action.option_strings or isinstance(action, argparse._HelpAction)
                    or action.default in (None, False, [], argparse.SUPPRESS)):
                continue
            if "default" not in formatter._get_help_string(action):
                missing.append(f"{name} {action.option_strings[0]}")
        assert "default" in command.format_help()
    assert not missing


KILLED_RUN = """
import sys, time
from tailedcore._io import work_folder
with work_folder(sys.argv[1]) as folder:
    (folder / "patches.f32").write_bytes(bytes(2**20))
    print(folder, flush=True)
    time.sleep(120)
"""


def _run_holding_a_work_folder(parent):
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(parent)], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_the_next_fit_removes_the_folders_of_killed_runs(synthetic_root, tmp_path, caplog):
    killed, killed_folder = _run_holding_a_work_folder(tmp_path)
    killed.kill()
    killed.wait()
    alive, alive_folder = _run_holding_a_work_folder(tmp_path)
    try:
        with caplog.at_level(logging.INFO, logger="tailedcore"):
            train = synthetic_root / "dots" / "train" / "good"
            PatchCore(**SMALL, calibration_share=0.0).fit(train, cache_dir=tmp_path)
        assert alive.poll() is None
        assert (tmp_path / alive_folder).is_dir()  # a live run's folder stays
    finally:
        alive.kill()
        alive.wait()
    messages = [record.getMessage() for record in caplog.records]
    assert not (tmp_path / killed_folder).exists()
    assert any(f"removed 1 folder(s) of killed runs from {tmp_path}, freeing 1.0 MiB" in m for m in messages)
    assert any(m.startswith("temporary feature files: ") and "GiB for 2 images" in m for m in messages)


def test_idle_openmp_threads_sleep_unless_the_user_says_otherwise():
    import os

    code = "import os, tailedcore; print(os.environ['OMP_WAIT_POLICY'])"
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          check=True).stdout.strip() == "PASSIVE"
    environment["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          check=True).stdout.strip() == "ACTIVE"


def test_a_starting_run_keeps_its_folder_while_another_cleans_up(tmp_path, monkeypatch):
    """A run that cleans up at the moment another has just made its work folder leaves that folder alone."""
    import fcntl

    from tailedcore import _io

    lock_now = fcntl.flock
    raced = []

    def flock_after_a_cleanup(handle, operation):
        if operation == fcntl.LOCK_EX and not raced:  # the starting run's lock, just before it is taken
            raced.append(_io.remove_stale_work_folders(tmp_path))
        return lock_now(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_cleanup)
    with _io.work_folder(tmp_path) as folder:
        assert raced == [(0, 0)] and folder.is_dir()
        (folder / "patches.f32").write_bytes(bytes(8))
    assert not folder.exists()
