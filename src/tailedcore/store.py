"""On-disk arrays, written and read in pieces: patch features, projections, the feature cache.

Patch features of a training set do not fit in RAM on ordinary machines
(1,670 images x 784 patches x 1024 dims is 5.4 GB). ``ArrayFile`` keeps an
array in a file and hands out the pieces asked for with plain reads (no
memory map), so resident memory stays bounded by what is read, whatever the
training set size. The patch store is an ArrayFile of (D,) items, float32 or
float16 on disk; the projections one of (P, d) items.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ._io import atomic_write_bytes

log = logging.getLogger(__name__)

DEFAULT_BLOCK_BYTES = 64 * 2**20
# Indexed reads: wanted items closer than this are read with what lies between them in one call
# (benchmarks/array_reads.py measures the choice).
GAP_BYTES = 64 * 2**10


STORE_DTYPES = ("float32", "float16")


class ArrayFile:
    """An array (n, *item_shape) in a raw file: appended items, read in pieces by plain reads, as float32.

    ``dtype`` is what the file holds: float32 (exact) or float16 (half the
    disk; items are rounded to 11 significant bits when written). Indexing
    reads only what is asked for and returns a new float32 array:
    ``a[start:stop]`` (items), ``a[i]``, ``a[indices]`` (int64 item indices,
    any order, repeats allowed; items closer than GAP_BYTES are read in one
    call) and ``a[:, lo:hi]`` (the sub-range lo..hi-1 of the first item axis
    of every item, e.g. a block of grid locations of every image). No memory
    map: the pages of a mapping would count as the process's resident memory.
    Picklable (path, shape, dtype), so engine tasks read their own pieces.
    """

    def __init__(self, path: str | os.PathLike, item_shape: tuple[int, ...], existing: bool = False,
                 dtype: str = "float32"):
        """A new, empty file at ``path``; ``existing``: the items another process wrote there."""
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype='{dtype}': choose from {', '.join(STORE_DTYPES)}")
        self.path, self.item_shape = Path(path), tuple(int(size) for size in item_shape)
        self.dtype = np.dtype(dtype)
        self._file = open(self.path, "r+b" if existing else "w+b")
        self._items = self.path.stat().st_size // self._item_bytes if existing else 0

    @property
    def _item_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.item_shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._items, *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    def __len__(self) -> int:
        return self._items

    def append(self, items: np.ndarray) -> None:
        """items: (k, *item_shape)."""
        items = np.ascontiguousarray(items, dtype=self.dtype).reshape(-1, *self.item_shape)
        self._file.seek(self._items * self._item_bytes)
        self._file.write(items.tobytes())
        self._items += len(items)

    @contextmanager
    def _descriptor(self) -> Iterator[int]:
        """A file descriptor to read from: this object's own file (flushed), or the path opened for a read."""
        if self._file is not None and not self._file.closed:
            self._file.flush()
            yield self._file.fileno()
            return
        with open(self.path, "rb") as file:
            yield file.fileno()

    def _read_runs(self, starts: np.ndarray, counts: np.ndarray, offset_bytes: int, out: np.ndarray) -> None:
        """Fill ``out`` (its first axis laid end to end) from runs of ``counts[j]`` items at item ``starts[j]``,
        each read ``offset_bytes`` into its first item."""
        buffer, position = memoryview(out.reshape(-1)).cast("B"), 0
        with self._descriptor() as fd:
            for start, count in zip(starts.tolist(), counts.tolist()):
                end, offset = position + count * out[0].nbytes, start * self._item_bytes + offset_bytes
                while position < end:  # one call reads at most about 2 GB
                    read = os.preadv(fd, [buffer[position:end]], offset)
                    if read == 0:
                        raise OSError(f"{self.path}: file ends before item {start + count}")
                    position, offset = position + read, offset + read

    def _empty(self, count: int, item_shape: tuple[int, ...] | None = None) -> np.ndarray:
        return np.empty((count, *(self.item_shape if item_shape is None else item_shape)), dtype=self.dtype)

    def __getitem__(self, key) -> np.ndarray:
        return self._read(key).astype(np.float32, copy=False)

    def _read(self, key) -> np.ndarray:
        """``self[key]`` in the file's dtype."""
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self._items)
            out = self._empty(max(0, stop - start))
            if len(out):
                self._read_runs(np.array([start]), np.array([len(out)]), 0, out)
            return out
        if isinstance(key, tuple) and len(key) >= 2 and key[0] == slice(None) and isinstance(key[1], slice) \
                and all(k == slice(None) for k in key[2:]) and self.item_shape:
            lo, hi, step = key[1].indices(self.item_shape[0])
            if step != 1:
                raise IndexError(f"{self.path}: a part of each item needs a step of 1, got {key[1]}")
            out = self._empty(self._items, (max(0, hi - lo), *self.item_shape[1:]))
            if out.size:
                per_part = self._item_bytes // self.item_shape[0]
                self._read_runs(np.arange(self._items), np.ones(self._items, np.int64), lo * per_part, out)
            return out
        indices = np.asarray(key)
        if indices.dtype.kind not in "iu" or indices.ndim > 1:
            raise IndexError(f"{self.path}: index with a slice, [:, lo:hi] or integer indices, got {key!r}")
        indices = indices.astype(np.int64, copy=False)  # the span arithmetic overflows small integer types
        if indices.ndim == 0:
            return self._read(indices.reshape(1))[0]
        if indices.size and (indices.min() < 0 or indices.max() >= self._items):
            raise IndexError(f"{self.path}: item index out of range 0..{self._items - 1}")
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._gather_sorted(unique)[inverse.reshape(-1)]

    def _gather_sorted(self, unique: np.ndarray) -> np.ndarray:
        """Items at increasing indices ``unique``: spans of wanted items less than GAP_BYTES apart (each
        at most a block) are read in one call each, the items between them dropped."""
        out = self._empty(len(unique))
        if not len(unique):
            return out
        gap_items, block = GAP_BYTES // self._item_bytes, self._block_items()
        new_span = np.diff(unique, prepend=-(gap_items + 2)) > gap_items + 1
        span = np.cumsum(new_span) - 1
        first = unique[new_span][span]
        new_span[1:] |= np.diff((unique - first) // block) != 0  # a span longer than a block is cut
        starts = np.flatnonzero(new_span)
        ends = np.append(starts[1:], len(unique))
        for start, end in zip(starts.tolist(), ends.tolist()):
            low = int(unique[start])
            buffer = self._empty(int(unique[end - 1]) - low + 1)
            self._read_runs(np.array([low]), np.array([len(buffer)]), 0, buffer)
            out[start:end] = buffer[unique[start:end] - low]
        return out

    def reshape(self, *shape: int) -> ArrayFile:
        """The same file read as (-1, *shape[1:]) items, e.g. (n, P, d) -> (n * P, d) rows."""
        view = ArrayFile.__new__(ArrayFile)
        view.path, view.item_shape, view._file, view.dtype = self.path, tuple(shape[1:]), self._file, self.dtype
        view._items = self._items * self._item_bytes // view._item_bytes
        return view

    def _block_items(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
        return max(1, block_bytes // self._item_bytes)

    def take(self, items: np.ndarray, path: str | os.PathLike) -> ArrayFile:
        """A new file at ``path`` holding the given items (int64 indices, in that order), copied in blocks."""
        out = ArrayFile(path, self.item_shape, dtype=self.dtype.name)
        step = self._block_items()
        for start in range(0, len(items), step):
            out.append(self._read(np.asarray(items[start : start + step])))
        return out

    def extend(self, other: ArrayFile) -> None:
        """Append all items of ``other`` (same item shape), copied in blocks."""
        step = other._block_items()
        for start in range(0, len(other), step):
            self.append(other._read(slice(start, start + step)))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __getstate__(self) -> dict:
        if self._file is not None and not self._file.closed:
            self._file.flush()  # a task in another process reads what was written so far
        return {"path": self.path, "item_shape": self.item_shape, "dtype": self.dtype, "_items": self._items,
                "_file": None}

    def __enter__(self) -> ArrayFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StoreChain:
    """Several ArrayFiles of one item shape read as one: items of file j follow those of file j - 1 (e.g.
    image shards). Indexed like an ArrayFile, by a slice or item indices."""

    def __init__(self, files: list[ArrayFile]):
        self.files = files
        self.offsets = np.cumsum([0] + [len(file) for file in files])
        self.item_shape = files[0].item_shape

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key) -> np.ndarray:
        indices = np.arange(*key.indices(len(self))) if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"item index out of range 0..{len(self) - 1}")
        out = np.empty((len(indices), *self.item_shape), dtype=np.float32)
        owner = np.searchsorted(self.offsets, indices, side="right") - 1
        for j in np.unique(owner):
            here = owner == j
            out[here] = self.files[j][indices[here] - self.offsets[j]]
        return out


class ImageSubset:
    """The rows of some images of a store, renumbered: image j of the subset is image ``images[j]``.

    Each image owns ``rows_per_image`` consecutive rows; indexing takes subset row numbers.
    """

    def __init__(self, store: ArrayFile | StoreChain, images: np.ndarray, rows_per_image: int):
        self.store, self.images, self.rows_per_image = store, np.asarray(images, dtype=np.int64), rows_per_image

    def __len__(self) -> int:
        return len(self.images) * self.rows_per_image

    @property
    def item_shape(self) -> tuple[int, ...]:
        return self.store.item_shape

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        image, offset = np.divmod(np.asarray(indices, dtype=np.int64), self.rows_per_image)
        return self.store[self.images[image] * self.rows_per_image + offset]


def file_identity(path: Path) -> list:
    """What identifies a file's content cheaply: resolved path, size, modification time (ns)."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


class FeatureCache:
    """Completed feature batches kept in ``folder`` and reused by a later run.

    A batch is stored under a key made of the extractor settings and the
    identity (path, size, mtime) of each of its image files, so an edited
    image or another setting never reuses stale features. Files are written
    atomically and read without pickle.
    """

    VERSION = 1

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def key(self, paths: Sequence[Path], settings: dict, with_embeddings: bool) -> str:
        identity = [self.VERSION, settings, with_embeddings, [file_identity(Path(p)) for p in paths]]
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def contains(self, key: str) -> bool:
        """Whether an entry is stored under ``key`` (it may still turn out damaged when loaded)."""
        return self._path(key).is_file()

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None (missing, or damaged: then removed, to be recomputed)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            log.warning("%s: damaged cache entry (%s), recomputed", path, error)
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self._path(key), buffer.getvalue())
