"""Training features for a fit: streamed to disk, projected in RAM, closed as one context.

``TrainingRun`` opens every file a fit writes (the patch store, the tail views'
store) on one ``contextlib.ExitStack``, so leaving the ``with`` block closes
them all, whatever the policy did. Arrays: patches (n * P, D) float32 on
disk, projections (n, P, d) float32, embeddings (n, E), mean patch features
(n, D); P = grid locations per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import ImageLoadError, load_image
from .engine import LocalEngine, RayEngine
from .features import FeatureExtractor
from .policies import FeatureSet
from .store import FeatureCache, FeatureStore, StoreChain
from .views import augmented_views


@dataclass
class ExtractedFeatures:
    """Features of the readable training images: ``readable`` (n,) int64 indices into the paths given."""

    features: FeatureSet
    embeddings: np.ndarray
    mean_patches: np.ndarray
    readable: np.ndarray


def _stream(extractor: FeatureExtractor, paths: list[Path], store: FeatureStore, projection: np.ndarray, on_error,
            cache: FeatureCache | None) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]]:
    """Batch by batch: append the patch features to ``store``; yield (readable positions in ``paths``,
    projections (b, P, d), embeddings (b, E), mean patch features (b, D))."""
    for positions, batch in extractor.iter_batches(paths, True, "features", on_error, cache):
        store.append(batch.patches.reshape(-1, store.dim))
        yield positions, batch.patches @ projection, batch.embeddings, batch.patches.mean(axis=1)


def _extract_shard(init_args: tuple, paths: list[Path], out: Path, projection: np.ndarray,
                   cache_folder: Path | None) -> tuple:
    """Features of one image shard, as an engine task: patches written to ``out``; returns (readable
    positions, projections (k, P, d), embeddings (k, E), mean patch features (k, D), (position, reason)
    of the unreadable images)."""
    extractor = FeatureExtractor(*init_args)
    cache = FeatureCache(cache_folder) if cache_folder is not None else None
    index = {path: position for position, path in enumerate(paths)}
    errors: list[tuple[int, str]] = []
    positions, projected, embeddings, mean_patches = [], [], [], []

    def on_error(path: Path, reason: str) -> None:
        errors.append((index[path], reason))

    with FeatureStore(out, extractor.feature_dim) as store:
        for batch_positions, batch_projected, batch_embeddings, batch_means in _stream(
                extractor, paths, store, projection, on_error, cache):
            positions += batch_positions
            projected.append(batch_projected)
            embeddings.append(batch_embeddings)
            mean_patches.append(batch_means)
    if not positions:
        return [], None, None, None, errors
    return (positions, np.concatenate(projected), np.concatenate(embeddings), np.concatenate(mean_patches),
            errors)


class TrainingRun(ExitStack):
    """The files of one fit under ``folder``; use as ``with TrainingRun(...) as run:``.

    With an ``engine`` of several workers, features are computed as tasks over
    image shards, each writing its own file under ``folder`` (which every
    worker must be able to read and write: a shared file system on a cluster).
    """

    def __init__(self, extractor: FeatureExtractor, folder: Path, projection: np.ndarray,
                 engine: LocalEngine | RayEngine | None = None):
        super().__init__()
        self.extractor, self.folder, self.projection = extractor, folder, projection
        self.engine = engine or LocalEngine()

    def _store(self, name: str) -> FeatureStore:
        return self.enter_context(FeatureStore(self.folder / name, self.extractor.feature_dim))

    @property
    def _locations(self) -> int:
        rows, cols = self.extractor.grid_shape
        return rows * cols

    def extract(self, paths: list[Path], on_error, cache: FeatureCache | None) -> ExtractedFeatures:
        """Stream the patch features of ``paths`` to disk; projections, embeddings and means stay in RAM."""
        if self.engine.workers > 1:
            return self._extract_shards(paths, on_error, cache)
        store = self._store("patches.f32")
        projected = np.empty((len(paths), self._locations, self.projection.shape[1]), dtype=np.float32)
        embeddings, mean_patches, readable = [], [], []
        for positions, batch_projected, batch_embeddings, batch_means in _stream(
                self.extractor, paths, store, self.projection, on_error, cache):
            projected[len(readable) : len(readable) + len(positions)] = batch_projected
            embeddings.append(batch_embeddings)
            mean_patches.append(batch_means)
            readable += positions
        if not readable:
            raise ValueError("no readable training images")
        return ExtractedFeatures(FeatureSet(store, projected[: len(readable)]), np.concatenate(embeddings),
                                 np.concatenate(mean_patches), np.asarray(readable, dtype=np.int64))

    def _extract_shards(self, paths: list[Path], on_error, cache: FeatureCache | None) -> ExtractedFeatures:
        """``extract`` as engine tasks over shards of whole batches; the same arrays, the patches in one
        file per shard (read as one store)."""
        batch = self.extractor.batch_size
        per_shard = -(-len(paths) // (batch * 2 * self.engine.workers)) * batch
        starts = list(range(0, len(paths), per_shard))
        tasks = [(self.extractor.init_args, paths[start : start + per_shard], self.folder / f"patches-{n}.f32",
                  self.projection, cache.folder if cache else None)
                 for n, start in enumerate(starts)]
        results = self.engine.map(_extract_shard, tasks)
        stores, parts, readable = [], [], []
        for n, (start, (positions, projected, embeddings, mean_patches, errors)) in enumerate(zip(starts, results)):
            for position, reason in errors:
                if on_error is None:
                    raise ImageLoadError(reason)
                on_error(paths[start + position], reason)
            if positions:
                path = self.folder / f"patches-{n}.f32"
                stores.append(self.enter_context(FeatureStore(path, self.extractor.feature_dim, existing=True)))
                parts.append((projected, embeddings, mean_patches))
                readable += [start + position for position in positions]
        if not readable:
            raise ValueError("no readable training images")
        projected, embeddings, mean_patches = (np.concatenate(arrays) for arrays in zip(*parts))
        return ExtractedFeatures(FeatureSet(StoreChain(stores), projected), embeddings, mean_patches,
                                 np.asarray(readable, dtype=np.int64))

    def view_maker(self, paths: list[Path], transforms: list[tuple[float, bool]], batch_size: int,
                   progress: bool) -> Callable[[np.ndarray], FeatureSet]:
        """A function: image indices into ``paths`` -> FeatureSet of all their rotated/flipped views.

        Views of the j-th given image are rows [j * V, (j + 1) * V) in the order of ``transforms``.
        """
        extractor = self.extractor

        def views(indices: np.ndarray) -> FeatureSet:
            store = self._store("views.f32")
            projected = np.empty((len(indices) * len(transforms), self._locations, self.projection.shape[1]),
                                 np.float32)
            row = 0
            for index in tqdm(indices, desc="tail views", unit="img", disable=not progress, leave=False):
                image = extractor.standardise([load_image(paths[int(index)], extractor.resize, extractor.crop)])[0]
                all_views = augmented_views(image, transforms)
                for start in range(0, len(all_views), batch_size):
                    chunk = all_views[start : start + batch_size]
                    batch = extractor.features(chunk)
                    store.append(batch.patches.reshape(-1, store.dim))
                    projected[row : row + len(chunk)] = batch.patches @ self.projection
                    row += len(chunk)
            return FeatureSet(store, projected)

        return views
