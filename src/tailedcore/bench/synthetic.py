"""A procedurally generated MVTec-layout dataset (textures with painted defects).

Used by tests and as the demo's fallback when no real images are at hand.
Each class is a texture family (stripes, checkerboard, dots, wood-like grain)
with random phase and jitter per image; defects are blobs or scratches of
another intensity, with exact ground-truth masks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("stripes", "checker", "dots", "grain")


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 texture of the given family."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
        base = 0.5 + 0.4 * np.sin(2 * np.pi * 8 * x + phase)
        color = np.array([0.9, 0.6, 0.3])
    elif kind == "checker":
        shift = rng.uniform(0, 1)
        base = 0.25 + 0.5 * ((np.floor((x + shift) * 6) + np.floor((y + shift) * 6)) % 2)
        color = np.array([0.5, 0.7, 0.9])
    elif kind == "dots":
        base = 0.3 + 0.5 * (np.sin(2 * np.pi * 5 * x + phase) * np.sin(2 * np.pi * 5 * y + phase) > 0.3)
        color = np.array([0.7, 0.9, 0.5])
    elif kind == "grain":
        base = 0.5 + 0.3 * np.sin(2 * np.pi * (10 * y + 2 * np.sin(2 * np.pi * x + phase)))
        color = np.array([0.8, 0.55, 0.35])
    else:
        raise ValueError(f"unknown texture '{kind}'")
    noisy = base + rng.normal(0, 0.03, base.shape)
    return (np.clip(noisy[..., None] * color, 0, 1) * 255).astype(np.uint8)


def _defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a blob or a scratch: returns (image, mask (size, size) bool)."""
    size = image.shape[0]
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    if rng.random() < 0.5:
        rx, ry = rng.uniform(0.06, 0.14, 2) * size
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    else:
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.25, 0.45) * size
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=max(2, size // 32))
    region = np.asarray(mask) > 0
    out = image.copy()
    out[region] = rng.choice([20, 235]) if rng.random() < 0.5 else np.array([200, 30, 30], dtype=np.uint8)
    return out, region


def make_dataset(root: str | os.PathLike, train_counts: dict[str, int] | None = None, test_good: int = 4,
                 test_defect: int = 4, size: int = 128, seed: int = 0) -> Path:
    """Write an MVTec-layout dataset under ``root`` and return its path.

    train_counts: class -> number of train/good images (default 8 per class);
    each class gets ``test_good`` normal and ``test_defect`` defective test
    images (type ``defect``) with masks in ``ground_truth/defect``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = train_counts or {name: 8 for name in CLASSES}
    for name, n_train in counts.items():
        kind = name if name in CLASSES else CLASSES[sum(map(ord, name)) % len(CLASSES)]
        folders = {
            "train": root / name / "train" / "good",
            "good": root / name / "test" / "good",
            "defect": root / name / "test" / "defect",
            "mask": root / name / "ground_truth" / "defect",
        }
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_train):
            Image.fromarray(_texture(kind, size, rng)).save(folders["train"] / f"{i:03d}.png")
        for i in range(test_good):
            Image.fromarray(_texture(kind, size, rng)).save(folders["good"] / f"{i:03d}.png")
        for i in range(test_defect):
            image, region = _defect(_texture(kind, size, rng), rng)
            Image.fromarray(image).save(folders["defect"] / f"{i:03d}.png")
            Image.fromarray((region * 255).astype(np.uint8)).save(folders["mask"] / f"{i:03d}_mask.png")
    return root
