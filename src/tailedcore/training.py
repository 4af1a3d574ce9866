"""Training features for a fit: streamed to disk, closed as one context.

``TrainingRun`` opens every file a fit writes (the patch store, the
projections, the tail views' store) on one ``contextlib.ExitStack``, so
leaving the ``with`` block closes them all, whatever the policy did. Arrays:
patches (n * P, D) (float32, or float16 with ``store_dtype``) and projections
(n, P, d) float32 on disk (read in pieces, so resident memory does not grow
with the training set); embeddings
(n, E) and mean patch features (n, D) in RAM; P = grid locations per image.
Tail views' projections stay in RAM: they grow with the tail, not the set.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ._io import remove_stale_work_folders, work_folder
from .data import ImageLoadError, load_image
from .engine import LocalEngine, RayEngine, shard_starts
from .features import FeatureExtractor
from .memory import MemoryBank
from .policies import FeatureSet, Policy, TrainingFeatures
from .products import Products, find_products
from .sampling import project
from .store import ArrayFile, FeatureCache, ImageSubset, StoreChain
from .tail import LinkageTailSampler, TailInputs
from .thresholds import held_out_images
from .timing import StageTimer, trim_heap
from .views import augmented_views

log = logging.getLogger(__name__)


@dataclass
class ExtractedFeatures:
    """Features of the readable training images: ``readable`` (n,) int64 indices into the paths given."""

    features: FeatureSet
    embeddings: np.ndarray
    mean_patches: np.ndarray
    readable: np.ndarray


def _stream(extractor: FeatureExtractor, paths: list[Path], store: ArrayFile, projection: np.ndarray, on_error,
            cache: FeatureCache | None) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]]:
    """Batch by batch: append the patch features to ``store``; yield (readable positions in ``paths``,
    projections (b, P, d), embeddings (b, E), mean patch features (b, D))."""
    for positions, batch in extractor.iter_batches(paths, True, "features", on_error, cache):
        store.append(batch.patches.reshape(-1, *store.item_shape))
        yield positions, project(batch.patches, projection), batch.embeddings, batch.patches.mean(axis=1)
        trim_heap()


def _extract_shard(init_args: tuple, paths: list[Path], out: Path, store_dtype: str, projected_out: Path,
                   projection: np.ndarray, cache_folder: Path | None) -> tuple:
    """Features of one image shard, as an engine task: patches written to ``out``, projections (k, P, d)
    to ``projected_out``; returns (readable positions, embeddings (k, E), mean patch features (k, D),
    (position, reason) of the unreadable images)."""
    extractor = FeatureExtractor(*init_args)
    cache = FeatureCache(cache_folder) if cache_folder is not None else None
    index = {path: position for position, path in enumerate(paths)}
    errors: list[tuple[int, str]] = []
    positions, embeddings, mean_patches = [], [], []

    def on_error(path: Path, reason: str) -> None:
        errors.append((index[path], reason))

    rows, cols = extractor.grid_shape
    with (ArrayFile(out, (extractor.feature_dim,), dtype=store_dtype) as store,
          ArrayFile(projected_out, (rows * cols, projection.shape[1])) as projected):
        for batch_positions, batch_projected, batch_embeddings, batch_means in _stream(
                extractor, paths, store, projection, on_error, cache):
            positions += batch_positions
            projected.append(batch_projected)
            embeddings.append(batch_embeddings)
            mean_patches.append(batch_means)
    if not positions:
        return [], None, None, errors
    return positions, np.concatenate(embeddings), np.concatenate(mean_patches), errors


def _views(extractor: FeatureExtractor, paths: list[Path], transforms: list[tuple[float, bool]], batch_size: int,
           store: ArrayFile, projection: np.ndarray, progress: bool) -> np.ndarray:
    """Rotated/flipped views of some images: their patch features appended to ``store`` (views of image j
    at rows [j * V * P, (j + 1) * V * P)); returns their projections (len(paths) * V, P, d)."""
    projected = []
    for path in tqdm(paths, desc="tail views", unit="img", disable=not progress, leave=False):
        image = extractor.standardise([load_image(path, extractor.resize, extractor.crop)])[0]
        all_views = augmented_views(image, transforms)
        for start in range(0, len(all_views), batch_size):
            batch = extractor.features(all_views[start : start + batch_size])
            store.append(batch.patches.reshape(-1, *store.item_shape))
            projected.append(project(batch.patches, projection))
    rows, cols = extractor.grid_shape
    return np.concatenate(projected) if projected else np.empty((0, rows * cols, projection.shape[1]), np.float32)


def _view_shard(init_args: tuple, paths: list[Path], transforms: list[tuple[float, bool]], batch_size: int,
                out: Path, store_dtype: str, projection: np.ndarray) -> np.ndarray:
    """``_views`` of a shard of images as an engine task, its patch features written to ``out``."""
    extractor = FeatureExtractor(*init_args)
    with ArrayFile(out, (extractor.feature_dim,), dtype=store_dtype) as store:
        return _views(extractor, paths, transforms, batch_size, store, projection, False)


class TrainingRun(ExitStack):
    """The files of one fit under ``folder``; use as ``with TrainingRun(...) as run:``.

    ``store_dtype``: what the patch stores hold on disk (store.STORE_DTYPES).

    With an ``engine`` of several workers, features are computed as tasks over
    image shards, each writing its own file under ``folder`` (which every
    worker must be able to read and write: a shared file system on a cluster).
    """

    def __init__(self, extractor: FeatureExtractor, folder: Path, projection: np.ndarray,
                 engine: LocalEngine | RayEngine | None = None, store_dtype: str = "float32"):
        super().__init__()
        self.extractor, self.folder, self.projection = extractor, folder, projection
        self.engine, self.store_dtype = engine or LocalEngine(), store_dtype

    def _store(self, name: str, existing: bool = False) -> ArrayFile:
        """The patch store ``name`` of this run: (D,) items in the run's store dtype."""
        return self.enter_context(ArrayFile(self.folder / name, (self.extractor.feature_dim,), existing,
                                            self.store_dtype))

    def _projections(self, name: str) -> ArrayFile:
        """A new (n, P, d) file of projections."""
        return self.enter_context(ArrayFile(self.folder / name, (self.locations, self.projection.shape[1])))

    def take_images(self, projected: ArrayFile, images: np.ndarray) -> ArrayFile:
        """The projections of the given images (int64 indices) as a new file of this run."""
        return self.enter_context(projected.take(images, self.folder / "projections-kept.f32"))

    @property
    def locations(self) -> int:
        """Patch locations per image (P)."""
        rows, cols = self.extractor.grid_shape
        return rows * cols

    def extract(self, paths: list[Path], on_error, cache: FeatureCache | None) -> ExtractedFeatures:
        """Stream the patch features of ``paths`` and their projections to disk; embeddings and means stay
        in RAM."""
        if self.engine.workers > 1:
            return self._extract_shards(paths, on_error, cache)
        store, projected = self._store("patches.f32"), self._projections("projections.f32")
        embeddings, mean_patches, readable = [], [], []
        for positions, batch_projected, batch_embeddings, batch_means in _stream(
                self.extractor, paths, store, self.projection, on_error, cache):
            projected.append(batch_projected)
            embeddings.append(batch_embeddings)
            mean_patches.append(batch_means)
            readable += positions
        if not readable:
            raise ValueError("no readable training images")
        return ExtractedFeatures(FeatureSet(store, projected), np.concatenate(embeddings),
                                 np.concatenate(mean_patches), np.asarray(readable, dtype=np.int64))

    def _extract_shards(self, paths: list[Path], on_error, cache: FeatureCache | None) -> ExtractedFeatures:
        """``extract`` as engine tasks over shards of whole batches; the same arrays, the patches in one
        file per shard (read as one store), the projections copied into one file in shard order."""
        starts, per_shard = shard_starts(len(paths), self.extractor.batch_size, self.engine.workers)
        tasks = [(self.extractor.init_args, paths[start : start + per_shard], self.folder / f"patches-{n}.f32",
                  self.store_dtype, self.folder / f"projections-{n}.f32", self.projection,
                  cache.folder if cache else None)
                 for n, start in enumerate(starts)]
        results = self.engine.map(_extract_shard, tasks)
        stores, parts, readable = [], [], []
        projected = self._projections("projections.f32")
        for n, (start, (positions, embeddings, mean_patches, errors)) in enumerate(zip(starts, results)):
            for position, reason in errors:
                if on_error is None:
                    raise ImageLoadError(reason)
                on_error(paths[start + position], reason)
            if positions:
                stores.append(self._store(f"patches-{n}.f32", existing=True))
                with ArrayFile(self.folder / f"projections-{n}.f32", projected.item_shape, existing=True) as shard:
                    projected.extend(shard)
                (self.folder / f"projections-{n}.f32").unlink()
                parts.append((embeddings, mean_patches))
                readable += [start + position for position in positions]
        if not readable:
            raise ValueError("no readable training images")
        embeddings, mean_patches = (np.concatenate(arrays) for arrays in zip(*parts))
        return ExtractedFeatures(FeatureSet(StoreChain(stores), projected), embeddings, mean_patches,
                                 np.asarray(readable, dtype=np.int64))

    def view_maker(self, paths: list[Path], transforms: list[tuple[float, bool]], batch_size: int,
                   progress: bool) -> Callable[[np.ndarray], FeatureSet]:
        """A function: image indices into ``paths`` -> FeatureSet of all their rotated/flipped views.

        Views of the j-th given image are rows [j * V, (j + 1) * V) in the order of ``transforms``.
        With an engine of several workers, shards of the images run as its tasks,
        each writing its own patch file (read as one store).
        """
        def views(indices: np.ndarray) -> FeatureSet:
            if self.engine.workers == 1:
                store = self._store("views.f32")
                return FeatureSet(store, _views(self.extractor, [paths[int(i)] for i in indices], transforms,
                                                batch_size, store, self.projection, progress))
            shards = np.array_split(np.asarray(indices), min(len(indices), 2 * self.engine.workers))
            tasks = [(self.extractor.init_args, [paths[int(i)] for i in shard], transforms, batch_size,
                      self.folder / f"views-{n}.f32", self.store_dtype, self.projection)
                     for n, shard in enumerate(shards)]
            projected = self.engine.map(_view_shard, tasks)
            stores = [self._store(task[4].name, existing=True) for task in tasks]
            return FeatureSet(StoreChain(stores), np.concatenate(projected))

        return views


@contextmanager
def open_run(cache_dir: str | os.PathLike | None, extractor: FeatureExtractor, projection: np.ndarray,
             engine: LocalEngine | RayEngine, store_dtype: str, images: int, temp_bytes: int) -> Iterator[TrainingRun]:
    """A TrainingRun in a new work folder under ``cache_dir`` (None: the system's temporary folder), after
    removing the work folders of killed runs there; ``temp_bytes``: the expected size of the files of the
    ``images`` training images, logged."""
    removed, freed = remove_stale_work_folders(cache_dir)
    if removed:
        log.info("removed %d folder(s) of killed runs from %s, freeing %.1f MiB", removed,
                 cache_dir or tempfile.gettempdir(), freed / 2**20)
    with work_folder(cache_dir) as work, TrainingRun(extractor, work, projection, engine, store_dtype) as run:
        log.info("temporary feature files: %s, about %.2f GiB for %d images (removed at the end)", work,
                 temp_bytes / 2**30, images)
        yield run


@dataclass
class FittedMemory:
    """What a policy built of a fit's images: the memory bank, the policy's diagnostics, the products found
    (each memory row's product set), and the readable images split into those kept for memory and those
    held out for thresholds (``kept`` (k,) and ``held_out`` (h,): int64 indices into the readable images, whose
    patches ``features`` still holds while the run is open); ``row_images``: (M,) int64 position in ``kept``
    of the image each memory row was made of."""

    memory: MemoryBank
    diagnostics: dict
    products: Products
    kept_paths: list[Path]
    held_out_paths: list[Path]
    kept: np.ndarray
    held_out: np.ndarray
    row_images: np.ndarray
    features: FeatureSet


def build_memory(run: TrainingRun, paths: list[Path], on_error, cache: FeatureCache | None, policy: Policy,
                 calibration_share: float, calibration_min_class: int, seed: int, progress: bool,
                 timer: StageTimer) -> FittedMemory:
    """The fit's pipeline: features of ``paths`` -> products (the linkage estimator's clusters: the policy's
    own linkage estimator, or the default one) -> calibration hold-out per product -> the policy's memory (with
    the policy's own estimator, the products' tail is its tail: the hold-out does not shrink a head product into
    the tail)."""
    rng = np.random.default_rng(seed)
    with timer.stage("features"):
        extracted = run.extract(paths, on_error, cache)
    paths = [paths[i] for i in extracted.readable]
    with timer.stage("products"):
        own_estimator = isinstance(getattr(policy, "tail", None), LinkageTailSampler)
        estimator = policy.tail if own_estimator else LinkageTailSampler()
        products = find_products(TailInputs(extracted.embeddings, extracted.mean_patches), paths, estimator)
    held_out = held_out_images(products.labels, calibration_share, calibration_min_class, seed)
    kept = np.setdiff1d(np.arange(len(paths)), held_out)
    tail = estimator.estimate_from_clusters(products.labels).of_images(kept) if own_estimator else None
    kept_paths = [paths[i] for i in kept]
    features = extracted.features
    projected = run.take_images(features.projected, kept) if len(held_out) else features.projected
    transforms = policy.view_transforms()
    train = TrainingFeatures(
        ImageSubset(features.patches, kept, run.locations), projected, extracted.embeddings[kept],
        extracted.mean_patches[kept], run.view_maker(kept_paths, transforms, run.extractor.batch_size, progress),
        len(transforms), timer, run.engine, products.labels[kept], tail,
    )
    result = policy.build(train, rng, progress)
    products.memory_products = products.labels[kept][result.row_images]
    return FittedMemory(result.memory, result.diagnostics, products, kept_paths, [paths[i] for i in held_out],
                        kept, held_out, result.row_images, features)
