"""PatchCore patch features and image embeddings.

Per image: a grid of H x W locally aggregated patch features, (H*W, D) float32
with H = W = crop / 8 and D = ``feature_dim``, and one image embedding (E,).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .backbones import DEFAULT_STAGES, Backbone, backbone_spec, build_backbone, check_stages
from .data import ImageLoadError, load_image
from .engine import fast_bfloat16
from .store import FeatureCache, file_identity

log = logging.getLogger(__name__)


def pooling_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) float64 matrix of ``adaptive_avg_pool1d`` from in_size to out_size values.

    Output i averages inputs floor(i * in / out) .. ceil((i + 1) * in / out) - 1.
    """
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class PatchAggregator(torch.nn.Module):
    """PatchCore's local aggregation of backbone maps, as one convolution per map.

    Per location: the ``patch_size`` neighbourhood of each map (C x k x k
    values), each map resized to the output ``grid`` (a coarser one bilinearly,
    a finer one by average pooling), each layer's vector adaptive-average-pooled
    to ``layer_dim``, the concatenation pooled again to ``feature_dim``. Every
    step after the neighbourhood is linear and acts on channels only, so the
    whole chain is one k x k convolution per map (the pooling matrices folded
    into its kernel), and the resize can come after the convolution. The same
    numbers, a fraction of the work and memory.

    forward: maps (B, C_i, H_i, W_i), one per entry of ``channels`` -> (B, H*W, feature_dim), (H, W) = grid.
    """

    def __init__(self, channels: tuple[int, ...], patch_size: int = 3, layer_dim: int = 1024,
                 feature_dim: int = 1024, grid: tuple[int, int] | None = None):
        super().__init__()
        self.padding = (patch_size - 1) // 2
        self.grid = grid  # None: the first map's size
        final = pooling_matrix(len(channels) * layer_dim, feature_dim)
        self.parts = []
        for index, channel_count in enumerate(channels):
            inputs = channel_count * patch_size * patch_size  # unfold order: channel-major, then kernel
            weight = final[:, index * layer_dim : (index + 1) * layer_dim] @ pooling_matrix(inputs, layer_dim)
            used = torch.nonzero(weight.abs().sum(dim=1) > 0).flatten()  # output channels this map feeds
            first, last = int(used.min()), int(used.max()) + 1  # with the default sizes: one half each
            kernel = weight[first:last].reshape(last - first, channel_count, patch_size, patch_size).float()
            self.register_buffer(f"kernel{index}", kernel.contiguous(memory_format=torch.channels_last))
            self.parts.append((first, last))
        self.feature_dim = feature_dim

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        batch = maps[0].shape[0]
        height, width = self.grid or maps[0].shape[2:]
        out = maps[0].new_zeros((batch, self.feature_dim, height, width)).contiguous(memory_format=torch.channels_last)
        for index, (layer, (first, last)) in enumerate(zip(maps, self.parts)):
            part = F.conv2d(layer, getattr(self, f"kernel{index}"), padding=self.padding)
            if part.shape[2] > height:
                part = F.adaptive_avg_pool2d(part, (height, width))
            elif part.shape[2:] != (height, width):
                part = F.interpolate(part, size=(height, width), mode="bilinear", align_corners=False)
            out[:, first:last] += part
        return out.permute(0, 2, 3, 1).reshape(batch, height * width, self.feature_dim)


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


@dataclass
class Chunk:
    """Features of the readable images of a chunk of paths: their positions in the chunk, the
    FeatureBatch (None if none was readable) and (position, reason) of the unreadable ones."""

    positions: list[int]
    batch: FeatureBatch | None
    errors: list[tuple[int, str]]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The chunk as named arrays (empty ones where there is nothing), as the feature cache keeps it."""
        batch = self.batch
        return {
            "positions": np.asarray(self.positions, dtype=np.int64),
            "patches": batch.patches if batch is not None else np.empty(0, np.float32),
            "embeddings": batch.embeddings if batch is not None and batch.embeddings is not None else np.empty(0),
            "error_positions": np.asarray([i for i, _ in self.errors], dtype=np.int64),
            "error_reasons": np.asarray([r for _, r in self.errors], dtype=str),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Chunk:
        errors = [(int(i), str(r)) for i, r in zip(arrays["error_positions"], arrays["error_reasons"])]
        batch = None
        if arrays["patches"].size:
            batch = FeatureBatch(arrays["patches"], arrays["embeddings"] if arrays["embeddings"].size else None)
        return cls([int(i) for i in arrays["positions"]], batch, errors)


PRECISIONS = ("float32", "bfloat16")


class FeatureExtractor:
    """Images -> patch features (and embeddings) with a frozen backbone.

    Parameters are those of PatchCore: input geometry (``resize``, ``crop``),
    neighbourhood ``patch_size`` and the pooled dimensions. ``precision``
    "bfloat16" runs the backbone about twice as fast on CPUs with bfloat16
    units, with slightly different features (results are not bitwise those of
    float32); outputs are float32 either way.
    """

    def __init__(self, backbone: str, weights: str | None, resize: int, crop: int, patch_size: int, layer_dim: int,
                 feature_dim: int, batch_size: int, progress: bool, precision: str,
                 stages: tuple[int, ...] = DEFAULT_STAGES):
        stages = check_stages(stages)
        multiple = max(16, *stages)
        if crop % multiple:
            raise ValueError(f"crop={crop}: must be a multiple of {multiple}")
        if resize < crop:
            raise ValueError(f"resize={resize}: must be at least crop={crop}")
        self.resize, self.crop = resize, crop
        self.patch_size, self.layer_dim, self.feature_dim = patch_size, layer_dim, feature_dim
        self.batch_size = batch_size
        if precision not in PRECISIONS:
            raise ValueError(f"precision='{precision}': choose from {', '.join(PRECISIONS)}")
        self.precision = precision
        if precision == "bfloat16" and not fast_bfloat16():
            log.warning("this CPU has no bfloat16 units: bfloat16 features are emulated here, far slower than float32")
        self.progress = progress
        self.backbone_name = backbone
        self.stages = stages
        self.family = backbone_spec(backbone).family
        self.weights = weights
        self.weights_id = None if weights is None else file_identity(Path(weights))
        # Patch features from an exported graph (runtimes.GraphFeatures) instead of torch: the torch
        # backbone is then built only if embeddings are asked for.
        self.graph = None
        # What rebuilds this extractor in another process (engine tasks), without progress bars.
        self.init_args = (backbone, weights, resize, crop, patch_size, layer_dim, feature_dim, batch_size, False,
                          precision, stages)

    @cached_property
    def backbone(self) -> Backbone:
        return build_backbone(self.backbone_name, self.crop, self.weights, self.stages)

    @cached_property
    def aggregator(self) -> PatchAggregator:
        with torch.inference_mode():
            zeros = torch.zeros(1, 3, self.crop, self.crop).contiguous(memory_format=torch.channels_last)
            maps = self.backbone(zeros)
        return PatchAggregator(tuple(m.shape[1] for m in maps), self.patch_size, self.layer_dim, self.feature_dim,
                               self.grid_shape)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.crop // 8, self.crop // 8

    def standardise(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(crop, crop, 3) uint8 images -> (n, 3, crop, crop) float32, standardised with the backbone's mean/std."""
        return to_batch(images, self.family.mean, self.family.std)

    @torch.inference_mode()
    def features(self, batch: torch.Tensor, with_embeddings: bool = False) -> FeatureBatch:
        """batch: (B, 3, crop, crop) normalised -> FeatureBatch."""
        if self.graph is not None and not with_embeddings:
            return FeatureBatch(self.graph(batch), None)
        batch = batch.contiguous(memory_format=torch.channels_last)
        embeddings = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            if with_embeddings:
                maps, embedded = self.backbone.embed(batch)
                embeddings = embedded.float().numpy()
            else:
                maps = self.backbone(batch)
            patches = self.aggregator(*maps)
        return FeatureBatch(patches.float().numpy(), embeddings)

    def load(self, paths: Sequence[Path]) -> list[np.ndarray | ImageLoadError]:
        """Decode and preprocess; an unreadable file gives its ImageLoadError in its place."""
        loaded: list[np.ndarray | ImageLoadError] = []
        for path in paths:
            try:
                loaded.append(load_image(path, self.resize, self.crop))
            except ImageLoadError as error:
                loaded.append(error)
        return loaded

    def settings(self) -> dict:
        """Everything that determines the features of an image (for cache keys)."""
        return {"backbone": self.backbone_name, "embedding_dim": self.backbone.embedding_dim,
                "resize": self.resize, "crop": self.crop, "patch_size": self.patch_size,
                "layer_dim": self.layer_dim, "feature_dim": self.feature_dim, "precision": self.precision,
                "stages": list(self.stages),
                "weights": self.weights_id}

    def _compute(self, loaded: list, with_embeddings: bool) -> Chunk:
        positions = [i for i, item in enumerate(loaded) if not isinstance(item, ImageLoadError)]
        errors = [(i, str(item)) for i, item in enumerate(loaded) if isinstance(item, ImageLoadError)]
        if not positions:
            return Chunk(positions, None, errors)
        images = self.standardise([loaded[i] for i in positions])
        return Chunk(positions, self.features(images, with_embeddings), errors)

    @staticmethod
    def _cached(cache: FeatureCache | None, key: str | None) -> Chunk | None:
        arrays = cache.load(key) if cache else None
        if arrays is None:
            return None
        try:
            return Chunk.from_arrays(arrays)
        except KeyError:  # an entry of another layout is recomputed
            return None

    def iter_batches(
        self, paths: Sequence[Path], with_embeddings: bool = False, desc: str = "features",
        on_error: Callable[[Path, str], None] | None = None, cache: FeatureCache | None = None,
    ) -> Iterator[tuple[list[int], FeatureBatch]]:
        """Yield (indices into ``paths``, features) batch by batch, unreadable images left out.

        An unreadable image raises ImageLoadError, or with ``on_error`` is
        reported as on_error(path, reason) and skipped. With ``cache``,
        completed batches are stored and reused. Decoding runs one batch ahead
        in a thread.
        """
        chunks = [list(paths[i : i + self.batch_size]) for i in range(0, len(paths), self.batch_size)]
        keys = [cache.key(chunk, self.settings(), with_embeddings) if cache else None for chunk in chunks]
        # Only whether an entry exists is known ahead; it is read when its batch comes (a large folder's features
        # do not fit in memory at once).
        stored = [cache is not None and cache.contains(key) for key in keys]
        bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not self.progress, leave=False)
        with ThreadPoolExecutor(max_workers=1) as pool, closing(bar):
            pending: dict[int, Future] = {}

            def prefetch(start: int) -> None:
                following = next((i for i in range(start, len(chunks)) if not stored[i]), None)
                if following is not None and following not in pending:
                    pending[following] = pool.submit(self.load, chunks[following])

            prefetch(0)
            for index, chunk in enumerate(chunks):
                result = self._cached(cache, keys[index]) if stored[index] else None
                if result is None:
                    loaded = pending.pop(index).result() if index in pending else self.load(chunk)
                    prefetch(index + 1)
                    result = self._compute(loaded, with_embeddings)
                    if cache:
                        cache.save(keys[index], result.to_arrays())
                for position, reason in result.errors:
                    if on_error is None:
                        raise ImageLoadError(reason)
                    on_error(chunk[position], reason)
                if result.batch is not None:
                    offset = index * self.batch_size
                    yield [offset + i for i in result.positions], result.batch
                bar.update(len(chunk))
