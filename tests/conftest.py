import hashlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

from tailedcore.bench.synthetic import make_dataset  # noqa: E402

# Reduced input for fast tests: 80 px resized, 64 px crop -> an 8 x 8 patch grid.
SMALL = {"resize": 80, "crop": 64, "progress": False, "batch_size": 8}
SMALL_OPTIONS = ["--resize", "80", "--crop", "64", "--batch-size", "8"]  # the same on the command line


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextmanager
def benchmark_module(name: str):
    """benchmarks/NAME.py as a module, with benchmarks/ on the import path (its scripts import ``common``)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # a dataclass looks its module up while being made
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small MVTec-layout set: two head classes, two tail classes, masks for defects."""
    root = tmp_path_factory.mktemp("synthetic")
    return make_dataset(root, {"stripes": 12, "checker": 10, "dots": 2, "grain": 1}, test_good=3, test_defect=3,
                        size=96, seed=0)


@pytest.fixture(scope="session")
def cli_model(synthetic_root, tmp_path_factory):
    """A PatchCore model file fitted with the command line's defaults on ``synthetic_root``, calibrated."""
    from tailedcore.app.cli import main

    path = tmp_path_factory.mktemp("cli-model") / "m.safetensors"
    assert main(["--quiet", "fit", str(synthetic_root), "--method", "patchcore", "--out", str(path),
                 *SMALL_OPTIONS, "--calibration", str(synthetic_root / "checker" / "test" / "good")]) == 0
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def tree_digest(root) -> str:
    """SHA-256 over every path and file content below ``root``."""
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        sha.update(str(path.relative_to(root)).encode())
        if path.is_file():
            sha.update(path.read_bytes())
    return sha.hexdigest()


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ad"


def require_openvino() -> None:
    """Skip a test that runs OpenVINO where it cannot run: not installed, or with its oneDNN limited to
    SSE4.1 (ONEDNN_MAX_CPU_ISA=SSE41, the suite's stand-in for an older CPU), where its CPU plugin
    fails to build nodes (measured: "Interpolate node ... bad combination")."""
    pytest.importorskip("openvino")
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "SSE41":
        pytest.skip("OpenVINO's CPU plugin does not run with ONEDNN_MAX_CPU_ISA=SSE41")


def real_subset(train: dict[str, int], test_per_folder: int) -> tuple[list[Path], list[Path]]:
    """The first ``train[name]`` training images of each named real-ad class, and the first
    ``test_per_folder`` images of each of their test folders (skips the test without real-ad)."""
    if not REAL.is_dir():
        pytest.skip("real images (../shared/data/real-ad) not present")
    images = [path for name, count in train.items()
              for path in sorted((REAL / name / "train" / "good").iterdir())[:count]]
    test = [path for name in train for folder in sorted((REAL / name / "test").iterdir())
            for path in sorted(folder.iterdir())[:test_per_folder]]
    return images, test
