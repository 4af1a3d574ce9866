"""PatchCore patch features and image embeddings.

Per image: a grid of H x W locally aggregated patch features, (H*W, D) float32
with H = W = crop / 8 and D = ``feature_dim``, and one image embedding (E,).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .backbones import Backbone, build_backbone
from .data import load_image


def aggregate_patches(
    map8: torch.Tensor, map16: torch.Tensor, patch_size: int = 3, layer_dim: int = 1024, feature_dim: int = 1024
) -> torch.Tensor:
    """PatchCore's local aggregation of two backbone maps.

    map8: (B, C8, H, W), map16: (B, C16, h, w) -> (B, H*W, feature_dim).
    Each location takes its ``patch_size`` neighbourhood (C x k x k values),
    the stride-16 grid is bilinearly resized to H x W, each layer's vector is
    adaptive-average-pooled to ``layer_dim``, and the concatenation of the
    layers is pooled again to ``feature_dim``.
    """
    batch, _, height, width = map8.shape
    padding = (patch_size - 1) // 2
    pooled = []
    for layer in (map8, map16):
        unfolded = F.unfold(layer, kernel_size=patch_size, padding=padding)
        grid = unfolded.reshape(batch, -1, layer.shape[2], layer.shape[3])
        if grid.shape[2:] != (height, width):
            grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        vectors = grid.flatten(2).transpose(1, 2).reshape(batch * height * width, 1, -1)
        pooled.append(F.adaptive_avg_pool1d(vectors, layer_dim))
    stacked = torch.cat(pooled, dim=2)
    return F.adaptive_avg_pool1d(stacked, feature_dim).reshape(batch, height * width, feature_dim)


def to_batch(images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, H, W, 3) uint8 images -> (B, 3, H, W) float32 normalised, channels_last."""
    array = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((array - mean_t) / std_t).contiguous(memory_format=torch.channels_last)


@dataclass
class FeatureBatch:
    """Features of a batch of images.

    patches: (B, H*W, D) float32; embeddings: (B, E) float32 or None.
    """

    patches: np.ndarray
    embeddings: np.ndarray | None


class FeatureExtractor:
    """Images -> patch features (and embeddings) with a frozen backbone.

    Parameters are those of PatchCore: input geometry (``resize``, ``crop``),
    neighbourhood ``patch_size`` and the pooled dimensions.
    """

    def __init__(
        self,
        backbone: str = "efficientnet-lite0",
        weights: str | None = None,
        resize: int = 256,
        crop: int = 224,
        patch_size: int = 3,
        layer_dim: int = 1024,
        feature_dim: int = 1024,
        batch_size: int = 16,
        progress: bool = True,
    ):
        if crop % 16:
            raise ValueError(f"crop={crop}: must be a multiple of 16")
        if resize < crop:
            raise ValueError(f"resize={resize}: must be at least crop={crop}")
        self.resize, self.crop = resize, crop
        self.patch_size, self.layer_dim, self.feature_dim = patch_size, layer_dim, feature_dim
        self.batch_size = batch_size
        self.progress = progress
        self.backbone: Backbone = build_backbone(backbone, crop, weights)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.crop // 8, self.crop // 8

    def normalise(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return to_batch(images, self.backbone.mean, self.backbone.std)

    @torch.inference_mode()
    def features(self, batch: torch.Tensor, with_embeddings: bool = False) -> FeatureBatch:
        """batch: (B, 3, crop, crop) normalised -> FeatureBatch."""
        batch = batch.contiguous(memory_format=torch.channels_last)
        embeddings = None
        if with_embeddings:
            map8, map16, embedded = self.backbone.embed(batch)
            embeddings = embedded.float().numpy()
        else:
            map8, map16 = self.backbone(batch)
        patches = aggregate_patches(map8, map16, self.patch_size, self.layer_dim, self.feature_dim)
        return FeatureBatch(patches.numpy(), embeddings)

    def load(self, paths: Sequence[Path]) -> list[np.ndarray]:
        return [load_image(p, self.resize, self.crop) for p in paths]

    def iter_batches(
        self, paths: Sequence[Path], with_embeddings: bool = False, desc: str = "features"
    ) -> Iterator[tuple[list[np.ndarray], FeatureBatch]]:
        """Yield (images, features) batch by batch; decoding runs one batch ahead in a thread."""
        chunks = [paths[i : i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not self.progress, leave=False)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.load, chunks[0]) if chunks else None
            for index in range(len(chunks)):
                images = pending.result()
                if index + 1 < len(chunks):
                    pending = pool.submit(self.load, chunks[index + 1])
                yield images, self.features(self.normalise(images), with_embeddings)
                bar.update(len(images))
        bar.close()
