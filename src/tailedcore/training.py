"""Training features for a fit: streamed to disk, projected in RAM, closed as one context.

``TrainingRun`` opens every file a fit writes (the patch store, the tail views'
store) on one ``contextlib.ExitStack``, so leaving the ``with`` block closes
them all, whatever the policy did. Arrays: patches (n * P, D) float32 on
disk, projections (n, P, d) float32, embeddings (n, E), mean patch features
(n, D); P = grid locations per image.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import load_image
from .features import FeatureExtractor
from .policies import FeatureSet
from .store import FeatureCache, FeatureStore
from .views import augmented_views


@dataclass
class ExtractedFeatures:
    """Features of the readable training images: ``readable`` (n,) int64 indices into the paths given."""

    features: FeatureSet
    embeddings: np.ndarray
    mean_patches: np.ndarray
    readable: np.ndarray


class TrainingRun(ExitStack):
    """The files of one fit under ``folder``; use as ``with TrainingRun(...) as run:``."""

    def __init__(self, extractor: FeatureExtractor, folder: Path, projection: np.ndarray):
        super().__init__()
        self.extractor, self.folder, self.projection = extractor, folder, projection

    def _store(self, name: str) -> FeatureStore:
        return self.enter_context(FeatureStore(self.folder / name, self.extractor.feature_dim))

    @property
    def _locations(self) -> int:
        rows, cols = self.extractor.grid_shape
        return rows * cols

    def extract(self, paths: list[Path], on_error, cache: FeatureCache | None) -> ExtractedFeatures:
        """Stream the patch features of ``paths`` to disk; projections, embeddings and means stay in RAM."""
        store = self._store("patches.f32")
        projected = np.empty((len(paths), self._locations, self.projection.shape[1]), dtype=np.float32)
        embeddings, mean_patches, readable = [], [], []
        for positions, batch in self.extractor.iter_batches(paths, True, "features", on_error, cache):
            store.append(batch.patches.reshape(-1, store.dim))
            projected[len(readable) : len(readable) + len(positions)] = batch.patches @ self.projection
            embeddings.append(batch.embeddings)
            mean_patches.append(batch.patches.mean(axis=1))
            readable += positions
        if not readable:
            raise ValueError("no readable training images")
        return ExtractedFeatures(FeatureSet(store, projected[: len(readable)]), np.concatenate(embeddings),
                                 np.concatenate(mean_patches), np.asarray(readable, dtype=np.int64))

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
