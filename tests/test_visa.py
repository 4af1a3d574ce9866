"""VisA -> MVTec layout, on a small VisA-shaped release built here."""

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from tailedcore.app.cli import main
from tailedcore.bench.nlt import build, plan_profile
from tailedcore.bench.visa import VisAError, convert_visa
from tailedcore.data import load_mvtec

SIZE = (40, 30)  # width, height


def tree_digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_release(root, objects=(("candle", 22, 4), ("pcb1", 6, 3)), seed=0):
    """A VisA-shaped release: Data/Images/{Normal,Anomaly}, Data/Masks/Anomaly (values 0/1), split CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, normal, anomalous in objects:
        data = root / name / "Data"
        for index in range(normal):
            path = data / "Images" / "Normal" / f"{index:04d}.JPG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(path, format="JPEG")
            split = "train" if index < normal - 2 else "test"
            rows.append([name, split, "normal", f"{name}/Data/Images/Normal/{index:04d}.JPG", ""])
        for index in range(anomalous):
            image = data / "Images" / "Anomaly" / f"{index:03d}.JPG"
            mask = data / "Masks" / "Anomaly" / f"{index:03d}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(image, format="JPEG")
            values = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
            values[5:12, 8:20] = 1 + index  # VisA masks mark defects with small non-zero labels
            Image.fromarray(values).save(mask)
            rows.append([name, "test", "anomaly", f"{name}/Data/Images/Anomaly/{index:03d}.JPG",
                         f"{name}/Data/Masks/Anomaly/{index:03d}.png"])
    write_csv(root / "split_csv" / "1cls.csv", rows)
    return root / "split_csv" / "1cls.csv"


def write_csv(path, rows, header=("object", "split", "label", "image", "mask")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "VisA"
    return root, write_release(root)


def test_converts_to_mvtec_layout(release, tmp_path):
    root, split = release
    before = tree_digest(root)
    counts = convert_visa(root, split, tmp_path / "out")
    assert counts == {"candle": {"train_good": 20, "test_good": 2, "test_bad": 4},
                      "pcb1": {"train_good": 4, "test_good": 2, "test_bad": 3}}
    classes = {c.name: c for c in load_mvtec(tmp_path / "out")}
    assert sorted(classes) == ["candle", "pcb1"]
    candle = classes["candle"]
    assert len(candle.train) == 20 and candle.has_masks
    bad = [s for s in candle.test if s.label == 1]
    assert len(bad) == 4 and all(s.defect_type == "bad" and s.mask_path is not None for s in bad)
    mask = np.asarray(Image.open(bad[0].mask_path))
    assert set(np.unique(mask)) == {0, 255} and mask.shape == (SIZE[1], SIZE[0])
    assert (mask[5:12, 8:20] == 255).all() and mask.sum() == 255 * 7 * 12
    assert tree_digest(root) == before


def test_converted_release_builds_an_nlt_set(release, tmp_path):
    root, split = release
    convert_visa(root, split, tmp_path / "out")
    info = build(tmp_path / "out", tmp_path / "nlt", plan_profile(tmp_path / "out", "step-k1", 0.1, seed=0))
    assert info["classes"] and sum(item["role"] == "tail" for item in info["classes"].values()) == 1


def test_cli_convert_visa(release, tmp_path, capsys):
    root, split = release
    assert main(["--quiet", "convert-visa", str(root), "--split-csv", str(split), "--dest", str(tmp_path / "o")]) == 0
    assert "2 objects" in capsys.readouterr().out
    assert main(["--quiet", "convert-visa", str(root), "--split-csv", str(split), "--dest", str(tmp_path / "o")]) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("row, message", [
    (["candle", "test", "anomaly", "/etc/passwd", ""], "absolute path"),
    (["candle", "test", "normal", "candle/../../x.JPG", ""], "leaves the release root"),
    (["candle", "test", "normal", "candle/Data/Images/Normal/9999.JPG", ""], "file not found"),
    (["candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", ""], "without a mask"),
    (["candle", "train", "anomaly", "candle/Data/Images/Anomaly/000.JPG",
      "candle/Data/Masks/Anomaly/000.png"], "anomalous training image"),
    (["candle", "val", "normal", "candle/Data/Images/Normal/0000.JPG", ""], "split must be"),
    (["candle", "test", "good", "candle/Data/Images/Normal/0000.JPG", ""], "label must be"),
    (["../x", "test", "normal", "candle/Data/Images/Normal/0000.JPG", ""], "invalid object name"),
    (["candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""], "would both become"),
])
def test_bad_rows_are_rejected_before_writing(release, tmp_path, row, message):
    root, split = release
    with split.open("a", newline="") as handle:
        csv.writer(handle).writerow(row)
    with pytest.raises(VisAError, match=message) as info:
        convert_visa(root, split, tmp_path / "out")
    assert ":" in str(info.value).split(" ")[0]  # names the CSV file and line
    assert not (tmp_path / "out").exists()


def test_symlink_out_of_the_release_is_rejected(release, tmp_path):
    root, split = release
    outside = tmp_path / "outside.JPG"
    outside.write_bytes((root / "candle/Data/Images/Normal/0000.JPG").read_bytes())
    (root / "candle/Data/Images/Normal/link.JPG").symlink_to(outside)
    with split.open("a", newline="") as handle:
        csv.writer(handle).writerow(["candle", "test", "normal", "candle/Data/Images/Normal/link.JPG", ""])
    with pytest.raises(VisAError, match="through a symlink"):
        convert_visa(root, split, tmp_path / "out")


def test_missing_columns_and_mismatched_masks(release, tmp_path):
    root, split = release
    write_csv(tmp_path / "short.csv", [["candle", "train"]], header=("object", "split"))
    with pytest.raises(VisAError, match="missing column"):
        convert_visa(root, tmp_path / "short.csv", tmp_path / "out")
    Image.fromarray(np.ones((10, 10), dtype=np.uint8)).save(root / "candle/Data/Masks/Anomaly/001.png")
    with pytest.raises(VisAError, match="001.png: mask is 10x10"):
        convert_visa(root, split, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_destination_must_not_overlap_the_release(release):
    root, split = release
    with pytest.raises(VisAError, match="must not be"):
        convert_visa(root, split, root / "converted")
