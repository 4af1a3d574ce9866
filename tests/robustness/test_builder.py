"""The NLT builder: bad manifests are refused before anything is written; SOURCE is never modified."""

import os

import pytest

from tailedcore.app.cli import main
from tailedcore.bench.nlt import NLTError, build, plan_from_manifests, plan_profile
from tailedcore.bench.synthetic import make_dataset

from ..conftest import tree_digest


@pytest.fixture
def source(tmp_path):
    return make_dataset(tmp_path / "src", {"aa": 22, "bb": 6, "cc": 5}, test_good=2, test_defect=6, size=32, seed=6)


def manifests(folder, prune="", inject=""):
    folder.mkdir()
    (folder / "prune_good.txt").write_text(prune)
    (folder / "inject_defects.txt").write_text(inject)
    return folder


@pytest.mark.parametrize("inject,message", [
    ("/abs/aa/train/good/defect_000.png\n", "absolute"),
    ("aa/train/good/../../../../etc/passwd\n", "leaves the dataset root"),
    ("aa/train/good/defect_404.png\n", "no defect image"),
    ("zz/train/good/defect_000.png\n", "unknown class"),
    ("aa\\\\train\\\\good\\\\defect_000.png\n", "leaves the dataset root"),
])
def test_bad_entries_rejected_before_writing(source, tmp_path, inject, message):
    before = tree_digest(source)
    folder = manifests(tmp_path / "m", inject=inject)
    dest = tmp_path / "dest"
    assert main(["make-nlt", str(source), "--from-manifests", str(folder), "--dest", str(dest)]) == 1
    with pytest.raises(NLTError, match=message):
        plan_from_manifests(source, folder)
    assert not dest.exists() and tree_digest(source) == before


def test_symlink_pointing_outside_is_refused(source, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes((source / "aa" / "train" / "good" / "000.png").read_bytes())
    link = source / "aa" / "train" / "good" / "linked.png"
    os.symlink(outside / "secret.png", link)
    plan = plan_profile(source, "step-k1", seed=0)
    plan.kept["aa"].append("aa/train/good/linked.png")
    with pytest.raises(NLTError, match="resolves outside the source"):
        build(source, tmp_path / "dest", plan)
    assert not (tmp_path / "dest").exists()


def test_existing_destination_needs_overwrite(source, tmp_path):
    before = tree_digest(source)
    plan = plan_profile(source, "pareto", seed=1)
    dest = tmp_path / "dest"
    build(source, dest, plan)
    first = tree_digest(dest)
    with pytest.raises(NLTError, match="already exists"):
        build(source, dest, plan)
    build(source, dest, plan_profile(source, "step-k4", seed=2), overwrite=True)
    assert tree_digest(dest) != first and tree_digest(source) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dest.")]  # no staging left behind
    for overlapping in (source / "nested", source, source.parent):
        with pytest.raises(NLTError, match="must not be"):
            build(source, overlapping, plan, overwrite=True)
    assert tree_digest(source) == before
