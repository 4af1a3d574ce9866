"""Rotated and flipped views of tail images.

Rotating a crop leaves empty corners. Replicate-padding the crop to its
diagonal, rotating about the centre and cropping back fills them with edge
pixels; sampling the rotated crop with ``grid_sample(padding_mode="border")``
does exactly that in one step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def view_transforms(step_degrees: float = 15.0, flip: bool = True) -> list[tuple[float, bool]]:
    """(angle in degrees counter-clockwise, horizontal flip) of every view but the identity.

    With the defaults: 24 angles x {no flip, flip} - 1 = 47 views.
    """
    if step_degrees <= 0:
        raise ValueError(f"step_degrees={step_degrees}: must be positive")
    angles = [i * step_degrees for i in range(math.ceil(360.0 / step_degrees - 1e-9))]
    flips = (False, True) if flip else (False,)
    return [(a, f) for a in angles for f in flips if (a, f) != (0.0, False)]


def rotate_flip(images: torch.Tensor, angle: float, flip: bool) -> torch.Tensor:
    """images: (B, C, H, W) float -> the same shape, flipped then rotated by ``angle`` degrees."""
    if flip:
        images = images.flip(-1)
    if angle % 360 == 0:
        return images
    radians = math.radians(angle)
    cos, sin = math.cos(radians), math.sin(radians)
    height, width = images.shape[-2:]
    aspect = height / width
    # Output pixel p samples the input at [[cos, -sin], [sin, cos]] p (normalised coordinates, x right,
    # y down, aspect-corrected): the content turns counter-clockwise on screen.
    theta = torch.tensor(
        [[cos, -sin * aspect, 0.0], [sin / aspect, cos, 0.0]], dtype=images.dtype
    ).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augmented_views(image: torch.Tensor, transforms: list[tuple[float, bool]]) -> torch.Tensor:
    """Views of one image, (C, H, W) -> (len(transforms), C, H, W), for (angle, flip) transforms."""
    return torch.cat([rotate_flip(image[None], a, f) for a, f in transforms])


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def rotation_evidence(images: np.ndarray, views: np.ndarray, transforms: list[tuple[float, bool]]) -> float:
    """How much nearer a product's images come to each other when one of them is rotated.

    images: (n, d) mean patch features of n >= 2 images of one product; views: (n, V, d) those of their
    views, in the order of ``transforms``. Per ordered pair (a, b): the cosine distance from b to the
    nearest of a and its views, over that to the nearer of a and a's flipped copy (a alone without one).
    Returns the median over the pairs: 1 when no rotation brings the product's images nearer (a texture,
    or a part always photographed one way up), well below 1 when they lie in different orientations.
    """
    if len(images) < 2:
        raise ValueError(f"images: {len(images)} given, rotation evidence needs at least two")
    every = _unit(np.concatenate([images[:, None], views], axis=1).astype(np.float64))  # (n, 1 + V, d)
    distances = 1.0 - np.einsum("avd,bd->avb", every, _unit(images.astype(np.float64)))  # (a, view, b)
    unrotated = [0] + [1 + i for i, (angle, flip) in enumerate(transforms) if angle % 360 == 0 and flip]
    nearest = distances.min(axis=1)
    plain = distances[:, unrotated].min(axis=1)
    pairs = ~np.eye(len(images), dtype=bool)
    nearest, plain = nearest[pairs], plain[pairs]
    # A copy of b (distance 0 up to rounding) has nothing to bring nearer.
    ratios = np.where(plain > 1e-9, nearest / np.maximum(plain, 1e-9), 1.0)
    return float(np.median(ratios))
