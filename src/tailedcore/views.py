"""Rotated and flipped views of tail images.

Rotating a crop leaves empty corners. Replicate-padding the crop to its
diagonal, rotating about the centre and cropping back fills them with edge
pixels; sampling the rotated crop with ``grid_sample(padding_mode="border")``
does exactly that in one step.
"""

from __future__ import annotations

import math

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
