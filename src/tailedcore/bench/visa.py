"""Convert the VisA release into the MVTec layout every other command reads.

VisA keeps, per object, ``Data/Images/{Normal,Anomaly}/*`` and
``Data/Masks/Anomaly/*.png``, and lists the split in a CSV with the columns
``object, split, label, image, mask`` (paths relative to the release root,
labels ``normal`` / ``anomaly``). The result has, per object,
``train/good``, ``test/good``, ``test/bad`` and ``ground_truth/bad/<stem>_mask.png``
with masks binarised to 0 / 255. The release is never modified; the
destination is built in a temporary folder and renamed into place.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._io import destination_problem, link_or_copy, outside_root, staged_directory, write_png
from ..data import GOOD

DEFECT_TYPE = "bad"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
SPLITS = ("train", "test")


class VisAError(ValueError):
    """A split CSV or release that cannot be converted; the message names the file and line."""


@dataclass(frozen=True)
class Entry:
    """One CSV row, checked: where the image (and mask) go in the MVTec layout."""

    image: Path
    mask: Path | None
    target: str  # image path relative to the destination
    mask_target: str | None


def _release_path(root: Path, value: str, where: str) -> Path:
    problem = outside_root(value, "release root")
    if problem:
        raise VisAError(f"{where}: {problem}")
    full = root / PurePosixPath(value)
    if not full.is_file():
        raise VisAError(f"{where}: file not found: {full}")
    if not full.resolve().is_relative_to(root):
        raise VisAError(f"{where}: resolves outside the release root through a symlink: {value}")
    return full


def read_split(root: str | os.PathLike, split_csv: str | os.PathLike) -> list[Entry]:
    """Check every row of ``split_csv`` against the release at ``root``; nothing is written."""
    root, split_csv = Path(root).resolve(), Path(split_csv)
    if not split_csv.is_file():
        raise VisAError(f"{split_csv}: split CSV not found")
    with split_csv.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise VisAError(f"{split_csv}: missing column(s) {', '.join(missing)}")
        entries, targets = [], set()
        for line, row in enumerate(reader, start=2):
            where = f"{split_csv}:{line}"
            name, split, label = row["object"].strip(), row["split"].strip(), row["label"].strip()
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise VisAError(f"{where}: invalid object name '{name}'")
            if split not in SPLITS:
                raise VisAError(f"{where}: split must be train or test, not '{split}'")
            if label not in LABELS:
                raise VisAError(f"{where}: label must be normal or anomaly, not '{label}'")
            if split == "train" and LABELS[label]:
                raise VisAError(f"{where}: anomalous training image; the MVTec layout trains on normal images only")
            image = _release_path(root, row["image"].strip(), where)
            mask = None
            if LABELS[label]:
                if not row["mask"].strip():
                    raise VisAError(f"{where}: anomalous image without a mask")
                mask = _release_path(root, row["mask"].strip(), where)
            folder = f"{name}/{split}/{DEFECT_TYPE if LABELS[label] else GOOD}"
            target = f"{folder}/{image.name}"
            if target in targets:
                raise VisAError(f"{where}: two images would both become {target}")
            targets.add(target)
            mask_target = f"{name}/ground_truth/{DEFECT_TYPE}/{image.stem}_mask.png" if mask else None
            entries.append(Entry(image, mask, target, mask_target))
    if not entries:
        raise VisAError(f"{split_csv}: no rows")
    return entries


def binary_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The mask at ``path`` as uint8 0 / 255 (any non-zero value is a defect), checked against ``size``."""
    try:
        with Image.open(path) as mask:
            if mask.size != size:
                raise VisAError(f"{path}: mask is {mask.size[0]}x{mask.size[1]}, its image {size[0]}x{size[1]}")
            values = np.asarray(mask.convert("L"))
    except (OSError, UnidentifiedImageError) as error:
        raise VisAError(f"{path}: unreadable mask ({error})") from error
    return np.where(values > 0, 255, 0).astype(np.uint8)


def convert_visa(root: str | os.PathLike, split_csv: str | os.PathLike, dest: str | os.PathLike,
                 link: bool = True, overwrite: bool = False) -> dict[str, dict[str, int]]:
    """Write the MVTec layout of the VisA release at ``root`` to ``dest``; returns counts per object."""
    root, dest = Path(root).resolve(), Path(dest).absolute()
    problem = destination_problem(dest, root, overwrite)
    if problem:
        raise VisAError(problem)
    entries = read_split(root, split_csv)
    counts: dict[str, dict[str, int]] = {}
    with staged_directory(dest) as staging:
        for entry in entries:
            link_or_copy(entry.image, staging / entry.target, link)
            if entry.mask is not None:
                try:
                    with Image.open(entry.image) as image:
                        size = image.size
                except (OSError, UnidentifiedImageError) as error:
                    raise VisAError(f"{entry.image}: unreadable image ({error})") from error
                write_png(staging / entry.mask_target, binary_mask(entry.mask, size))
            name, split, kind = entry.target.split("/")[:3]
            key = f"{split}_{kind}"
            counts.setdefault(name, {"train_good": 0, "test_good": 0, f"test_{DEFECT_TYPE}": 0})[key] += 1
    return counts
