"""fit -> predict -> evaluate with the real Lite0 weights at a reduced input size."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tailedcore import PatchCore, SoftPatch, TailedCore, load
from tailedcore.app.cli import main
from tailedcore.engine import LocalEngine
from tailedcore.evaluation import evaluate
from tailedcore.policies import TailedCorePolicy
from tailedcore.tail import PaperTailSampler

from .conftest import SMALL

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ad"


@pytest.mark.parametrize("cls", [PatchCore, SoftPatch, TailedCore])
def test_fit_predict_evaluate(cls, synthetic_root):
    detector = cls(**SMALL).fit(synthetic_root)
    n_train = 12 + 10 + 2 + 1
    assert len(detector.training_paths_) == n_train
    assert 0 < len(detector.memory_) <= n_train * 64 * 48
    evaluation = evaluate(detector, synthetic_root)
    report = evaluation.metrics_json()
    assert report["method"] == cls.default_policy.method
    assert set(report["classes"]) == {"stripes", "checker", "dots", "grain"}
    for values in [*report["classes"].values(), report["mean"]]:
        for value in values.values():
            assert value is None or 0.0 <= value <= 1.0
    # Painted defects on regular textures are easy: the detector must see them.
    assert report["mean"]["image_auroc"] > 0.8
    assert report["mean"]["pixel_auroc"] > 0.8


@pytest.mark.parametrize("tail_coreset", ["joint", "per-image"])
def test_tailedcore_keeps_tail_images_whole(synthetic_root, tail_coreset):
    detector = TailedCore(**SMALL).set_params(policy__tail_coreset__scope=tail_coreset).fit(synthetic_root)
    tail = set(detector.diagnostics_["tail_indices"].tolist())
    names = [p.parts[-4] for p in detector.training_paths_]
    # The three images of the two smallest classes are found as tail ...
    assert {i for i, n in enumerate(names) if n in ("dots", "grain")} <= tail
    # ... and their 47 views made the tail memory large.
    assert detector.memory_.info["tail_memory"] >= int(0.1 * len(tail) * 48 * 64)


def test_cli_fit_predict_evaluate(synthetic_root, tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    small = ["--resize", "80", "--crop", "64"]
    normal = [str(synthetic_root / name / "test" / "good") for name in ("checker", "stripes")]
    assert main(["--quiet", "fit", str(synthetic_root), "--method", "patchcore", "--out", str(model), *small,
                 "--calibration", *normal]) == 0
    test_dir = synthetic_root / "checker" / "test" / "defect"
    out = tmp_path / "pred"
    assert main(["--quiet", "predict", str(model), str(test_dir), "--out", str(out)]) == 0
    records = json.loads((out / "scores.json").read_text())
    assert len(records) == 3 and all((out / r["overlay"]).is_file() and (out / r["mask"]).is_file() for r in records)
    # Painted defects are obvious; on images this alike, one that changes much of an image may be answered
    # "unknown product" instead (an alarm too, its nearest product named).
    assert all(r["decision"] in ("defect", "unknown product") and r["score"] > 0.5 for r in records)
    assert all(r["product"] == records[0]["product"] for r in records)
    assert (out / "scores.csv").read_text().startswith("image,score,decision,raw_score")
    evaluation_dir = tmp_path / "eval"
    assert main(["--quiet", "evaluate", str(model), str(synthetic_root), "--out", str(evaluation_dir)]) == 0
    metrics = json.loads((evaluation_dir / "metrics.json").read_text())
    assert metrics["method"] == "patchcore" and set(metrics["mean"]) == {"image_auroc", "pixel_auroc", "aupro",
                                                                           "image_f1_max"}
    printed = capsys.readouterr().out
    assert "from 25 training images" in printed and load(model).calibration_share == 0.0  # --calibration: none aside
    assert "images: 25 used, 0 skipped (unreadable), 0 set aside for thresholds" in printed
    assert "thresholds: image " in printed
    assert "(false-alarm rate 0.01 on 6 normal calibration images; a rough guess: at least 100 images" in printed
    assert "| checker |" in printed and (evaluation_dir / "metrics.md").is_file()
    assert (evaluation_dir / "metrics.csv").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.safetensors"), str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tailedcore: error:") and "missing.safetensors" in err[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(tmp_path), "--method", "patchcore", "--out", "m", "--lof-k", "3"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(tmp_path), "--out", "m", "--calibration", str(tmp_path), "--calibration-share", "0.2"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(tmp_path), "--out", "m", "--tail-coreset", "per_image"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(tmp_path), "--out", "m", "--tail-estimator", "knn"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(tmp_path), "--method", "softpatch", "--out", "m", "--tail-estimator", "paper"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("cls", [PatchCore, TailedCore])
def test_a_float16_store_gives_the_same_picks_rounded(cls, synthetic_root):
    # Projections are made before the store, so the picks are those of float32; only their rows are rounded.
    exact = cls(**SMALL, calibration_share=0.0).fit(synthetic_root).memory_.features
    half = cls(**SMALL, calibration_share=0.0, store_dtype="float16").fit(synthetic_root).memory_.features
    np.testing.assert_array_equal(half, exact.astype(np.float16).astype(np.float32))


def test_tail_estimator_choice_reaches_the_fit(synthetic_root):
    paper = TailedCore(TailedCorePolicy(tail=PaperTailSampler()), **SMALL, calibration_share=0.0).fit(synthetic_root)
    linkage = TailedCore(**SMALL, calibration_share=0.0).fit(synthetic_root)
    assert linkage.policy.tail.name == "linkage"
    # The linkage clusters are the four texture classes: 12, 10, 2 and 1 images.
    assert sorted(set(linkage.diagnostics_["class_sizes"].tolist())) == [1, 2, 10, 12]
    assert not np.array_equal(paper.diagnostics_["class_sizes"], linkage.diagnostics_["class_sizes"])


@pytest.mark.skipif(not REAL.is_dir(), reason="real images (../shared/data/real-ad) not present")
def test_real_images_small_subset(tmp_path):
    """Two real classes, a few images each, at a reduced input size."""
    root = tmp_path / "real"
    for name in ("bottle", "solar_mono"):
        for sub in ("train/good", "test/good", "test/" + ("broken_large" if name == "bottle" else "defective")):
            (root / name / sub).mkdir(parents=True)
            for image in sorted((REAL / name / sub).iterdir())[:6]:
                shutil.copy(image, root / name / sub / image.name)
    detector = PatchCore(resize=128, crop=112, progress=False).fit(root)
    evaluation = evaluate(detector, root)
    for name, result in evaluation.classes.items():
        assert result.metrics["pixel_auroc"] is None  # these classes have no masks
        assert result.metrics["image_auroc"] >= 0.75, name
    path = tmp_path / "m.safetensors"
    detector.save(path)
    good = [root / "bottle" / "test" / "good"]
    np.testing.assert_array_equal(load(path).predict(good).image_scores, detector.predict(good).image_scores)


def test_cli_fit_says_what_it_did(synthetic_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    (data / "stripes" / "train" / "good" / "broken.png").write_bytes(b"not a picture")
    model = tmp_path / "model.safetensors"
    assert main(["--quiet", "fit", str(data), "--out", str(model), "--resize", "80", "--crop", "64"]) == 0
    printed = capsys.readouterr().out
    detector = load(model)
    info = detector.memory_.info
    assert "images: 25 used, 1 skipped (unreadable), 0 set aside for thresholds" in printed
    assert f"tail: {info['tail_images']} images found, max K {info['max_k']}" in printed
    assert (f"memory: {len(detector.memory_)} rows ({info['tail_memory']} from the tail and its views, "
            f"{info['denoised_memory']} from the LOF-denoised images)") in printed
    assert "thresholds: not set (no product of 20 or more training images to set images aside from; " \
           "use --calibration DIR)" in printed
    assert ("search: ivf-batched (nlist_factor=2 nprobe=12 ranking_dim=256 rerank=4), kept in the model for every "
            "command") in printed
    assert f"model file: {model} ({model.stat().st_size / 2**20:.1f} MiB)" in printed
    calibrated = tmp_path / "calibrated.safetensors"
    assert main(["--quiet", "fit", str(synthetic_root), "--method", "patchcore", "--out", str(calibrated),
                 "--resize", "80", "--crop", "64", "--calibration-share", "0"]) == 0
    printed = capsys.readouterr().out
    assert "tail:" not in printed and f"memory: {len(load(calibrated).memory_)} rows\n" in printed
    assert "thresholds: not set (--calibration-share 0 and no --calibration)" in printed


class TwoWorkersHere(LocalEngine):
    """Tasks split as for two workers, run here: the sharded code paths without a cluster."""

    workers = 2


def test_work_split_for_two_workers_gives_the_same_model_and_scores(synthetic_root):
    local = TailedCore(**SMALL, calibration_share=0.0).fit(synthetic_root)
    split = TailedCore(**SMALL, calibration_share=0.0)
    split._engine = TwoWorkersHere()
    split.fit(synthetic_root)
    assert len(local.diagnostics_["tail_indices"]) >= 2  # the views of several tail images are split too
    np.testing.assert_array_equal(split.diagnostics_["tail_indices"], local.diagnostics_["tail_indices"])
    np.testing.assert_array_equal(split.memory_.features, local.memory_.features)
    test_images = sorted(synthetic_root.glob("*/test/*/*.png"))
    assert len(test_images) > 4
    a, b = local.predict(test_images), split.predict(test_images)
    assert "test shards" in [record.name for record in split.stage_times_.records]
    np.testing.assert_array_equal(a.patch_scores, b.patch_scores)
