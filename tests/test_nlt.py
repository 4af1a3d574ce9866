import json
import os

import numpy as np
import pytest

from tailedcore.app.cli import main
from tailedcore.bench.nlt import NLTError, build, pareto_sizes, plan_from_manifests, plan_profile
from tailedcore.bench.synthetic import make_dataset
from tailedcore.data import load_mvtec

from .conftest import tree_digest


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    counts = {"aa": 40, "bb": 30, "cc": 25, "dd": 22, "ee": 21}
    return make_dataset(tmp_path_factory.mktemp("nlt-src"), counts, test_good=3, test_defect=8, size=32, seed=1)


def test_step_profile_and_clean_protocol(source, tmp_path):
    before = tree_digest(source)
    plan = plan_profile(source, "step-k1", noise=0.1, seed=3)
    assert len(plan.tail) == 3 and len(plan.head) == 2  # round(0.6 * 5) tail classes
    dest = tmp_path / "nlt"
    info = build(source, dest, plan)
    assert tree_digest(source) == before  # SOURCE untouched
    classes = {c.name: c for c in load_mvtec(dest)}
    for name in plan.tail:
        assert len(classes[name].train) == 1 and info["classes"][name]["injected"] == 0
    for name in plan.head:
        expected_noise = min(round(0.1 * info["classes"][name]["kept"]), 4)
        assert info["classes"][name]["injected"] == expected_noise
        injected = [s for s in classes[name].train if not s.path.name[0].isdigit()]
        assert len(injected) == expected_noise
        # Clean protocol: no injected image (nor its mask) is left in the test split.
        test_names = {f"{s.defect_type}_{s.path.name}" for s in classes[name].test}
        assert not test_names & {s.path.name for s in injected}
    assert info["protocol"] == "clean" and len(info["injected_files"]) == sum(
        c["injected"] for c in info["classes"].values())
    assert (dest / "prune_good.txt").is_file() and json.loads((dest / "nlt.json").read_text())["seed"] == 3
    # Hard links by default: same inode as the source file.
    kept = dest / plan.kept[plan.head[0]][0]
    assert os.stat(kept).st_ino == os.stat(source / plan.kept[plan.head[0]][0]).st_ino
    with pytest.raises(NLTError, match="already exists"):
        build(source, dest, plan)


def test_a_plan_from_some_classes_only(source):
    plan = plan_profile(source, "step-k1", noise=0.1, seed=3, classes=["bb", "dd", "ee"])
    assert sorted(plan.kept) == ["bb", "dd", "ee"] and len(plan.tail) == 2  # round(0.6 * 3)
    assert all(path.startswith(("bb/", "dd/", "ee/")) for path in plan.injected.values())
    assert plan_profile(source, "step-k1", 0.1, 3, classes=None).kept == plan_profile(source, "step-k1", 0.1, 3).kept
    with pytest.raises(NLTError, match="no class named zz"):
        plan_profile(source, "step-k1", classes=["aa", "zz"])


def test_leaky_variant_and_rebuild_from_manifests(source, tmp_path):
    plan = plan_profile(source, "pareto", noise=0.1, seed=0)
    leaky = build(source, tmp_path / "leaky", plan, link=False, keep_injected_in_test=True)
    assert leaky["protocol"] == "leaky"
    n_test = sum(len(c.test) for c in load_mvtec(tmp_path / "leaky"))
    assert n_test == sum(len(c.test) for c in load_mvtec(source))
    rebuilt = plan_from_manifests(source, tmp_path / "leaky")
    assert rebuilt.kept == plan.kept and rebuilt.injected == plan.injected


def test_pareto_sizes():
    sizes = pareto_sizes([300] * 15, np.arange(15))
    assert sizes[0] == 300 and sizes == sorted(sizes, reverse=True) and min(sizes) == 5
    assert pareto_sizes([50, 400, 60], np.array([2, 0, 1]))[2] == 60  # order[0] = class 2: rank 0 keeps all


@pytest.mark.parametrize("entry,message", [
    ("/etc/passwd", "absolute"), ("aa/train/good/../../../x.png", "leaves"),
    ("aa/test/good/000.png", "expected"), ("aa/train/good/nothere.png", "no such train image"),
])
def test_bad_manifest_entries_are_rejected_before_writing(source, tmp_path, entry, message):
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "prune_good.txt").write_text(entry + "\n")
    (manifests / "inject_defects.txt").write_text("")
    with pytest.raises(NLTError, match=message):
        plan_from_manifests(source, manifests)


def test_cli_make_nlt(source, tmp_path, capsys):
    dest = tmp_path / "cli"
    assert main(["make-nlt", str(source), "--profile", "step-k4", "--seed", "1", "--dest", str(dest)]) == 0
    assert "clean protocol" in capsys.readouterr().out
    assert main(["make-nlt", str(source), "--profile", "step-k4", "--dest", str(dest)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["make-nlt", str(source), "--profile", "zipf", "--dest", str(tmp_path / "z")]) == 1
