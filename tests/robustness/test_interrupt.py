"""SIGINT during fit: a clean exit with a message; a re-run with --cache reuses completed feature batches."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tailedcore.bench.synthetic import make_dataset


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigint_then_resume_from_cache(tmp_path):
    # Enough images that the fit outlasts a test process starved of CPU by other work for a few seconds.
    root = make_dataset(tmp_path / "data", {"stripes": 400, "dots": 2}, test_good=1, test_defect=1, size=64, seed=9)
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "tailedcore", "--quiet", "fit", str(root), "--method", "patchcore",
               "--out", str(tmp_path / "m.safetensors"), "--resize", "80", "--crop", "64", "--batch-size", "2",
               "--cache", str(cache)]
    # A shell without job control starts background jobs with SIGINT ignored, and a child inherits that;
    # the fit must see SIGINT as a user at a terminal would, however the suite was started.
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(list((cache / "features").glob("*.npz"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    completed = len(list((cache / "features").glob("*.npz")))
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("tailedcore: interrupted")
    assert 2 <= completed < 201 and not (tmp_path / "m.safetensors").exists()
    assert not list((cache / "features").glob("*.tmp"))  # only complete batch files

    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.safetensors").is_file()
    assert len(list((cache / "features").glob("*.npz"))) == 201  # 402 images in batches of 2
    assert time.time() - started < 300


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_during_fit_removes_the_feature_files(tmp_path):
    root = make_dataset(tmp_path / "data", {"stripes": 160, "dots": 2}, test_good=1, test_defect=1, size=64, seed=9)
    temp = tmp_path / "temp"
    temp.mkdir()
    command = [sys.executable, "-m", "tailedcore", "--quiet", "fit", str(root), "--method", "patchcore",
               "--out", str(tmp_path / "m.safetensors"), "--resize", "80", "--crop", "64", "--batch-size", "2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(temp)})
    deadline = time.time() + 120
    while time.time() < deadline and not list(temp.glob("tailedcore-*/patches.f32")):
        time.sleep(0.05)
    assert list(temp.glob("tailedcore-*/patches.f32")), "fit did not start writing features"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "tailedcore: terminated"
    assert not list(temp.iterdir()) and not (tmp_path / "m.safetensors").exists()
