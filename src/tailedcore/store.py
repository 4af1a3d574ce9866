"""On-disk arrays, written and read in blocks: patch-feature stores and (n, ...) float32 arrays.

Patch features of a training set do not fit in RAM on ordinary machines
(1,670 images x 784 patches x 1024 dims is 5.4 GB). The store keeps them in a
file and hands out row blocks with plain reads (no memory map), so resident
memory stays bounded by the block size whatever the training set size.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ._io import atomic_write_bytes

DEFAULT_BLOCK_BYTES = 64 * 2**20


STORE_DTYPES = ("float32", "float16")


class FeatureStore:
    """Append-only rows of width ``dim`` in the file ``path``, read back as float32.

    ``dtype`` is what the file holds: float32 (exact) or float16 (half the
    disk; rows are rounded to 11 significant bits when written).
    """

    def __init__(self, path: str | os.PathLike, dim: int, existing: bool = False, dtype: str = "float32"):
        """A new, empty file at ``path``; ``existing``: open the rows another process wrote there."""
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype='{dtype}': choose from {', '.join(STORE_DTYPES)}")
        self.path = Path(path)
        self.dim, self.dtype = dim, np.dtype(dtype)
        self._row_bytes = dim * self.dtype.itemsize
        self._file = open(self.path, "r+b" if existing else "w+b")
        self._rows = self.path.stat().st_size // self._row_bytes if existing else 0

    def __len__(self) -> int:
        return self._rows

    @property
    def shape(self) -> tuple[int, int]:
        return self._rows, self.dim

    def append(self, rows: np.ndarray) -> None:
        """rows: (k, dim) float32."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1, self.dim)
        self._file.seek(self._rows * self._row_bytes)
        self._file.write(rows.tobytes())
        self._rows += len(rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new (stop - start, dim) float32 array."""
        start, stop = max(0, start), min(stop, self._rows)
        out = np.empty((max(0, stop - start), self.dim), dtype=self.dtype)
        if out.size:
            self._file.flush()
            self._file.seek(start * self._row_bytes)
            self._file.readinto(memoryview(out).cast("B"))
        return out.astype(np.float32, copy=False)

    def block_rows(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
        return max(1, block_bytes // self._row_bytes)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed) as a (len(indices), dim) array."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self._rows):
            raise IndexError(f"{self.path}: row index out of range 0..{self._rows - 1}")
        out = np.empty((len(indices), self.dim), dtype=np.float32)
        order = np.argsort(indices, kind="stable")
        sorted_rows = indices[order]
        step = self.block_rows()
        position = 0
        while position < len(sorted_rows):
            start = int(sorted_rows[position])
            end = int(np.searchsorted(sorted_rows, start + step, side="left"))
            block = self.read(start, min(start + step, self._rows))
            out[order[position:end]] = block[sorted_rows[position:end] - start]
            position = end
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArrayFile:
    """A float32 array (n, *item_shape) in a raw file: appended items, read in pieces by plain reads.

    Indexing reads only what is asked for and returns a new array:
    ``a[start:stop]`` (items), ``a[i]``, ``a[indices]`` (int64 item indices,
    any order, repeats allowed) and ``a[:, lo:hi]`` (the sub-range lo..hi-1 of the first
    item axis of every item, e.g. a block of grid locations of every image).
    No memory map: the pages of a mapping would count as the process's resident
    memory. Picklable (path and shape), so engine tasks read their own pieces.
    """

    def __init__(self, path: str | os.PathLike, item_shape: tuple[int, ...], existing: bool = False):
        """A new, empty file at ``path``; ``existing``: the items another process wrote there."""
        self.path, self.item_shape = Path(path), tuple(int(size) for size in item_shape)
        self._file = open(self.path, "r+b" if existing else "w+b")
        self._items = self.path.stat().st_size // self._item_bytes if existing else 0

    @property
    def _item_bytes(self) -> int:
        return 4 * int(np.prod(self.item_shape))

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
        items = np.ascontiguousarray(items, dtype=np.float32).reshape(-1, *self.item_shape)
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

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self._items)
            out = np.empty((max(0, stop - start), *self.item_shape), dtype=np.float32)
            if len(out):
                self._read_runs(np.array([start]), np.array([len(out)]), 0, out)
            return out
        if isinstance(key, tuple) and len(key) >= 2 and key[0] == slice(None) and isinstance(key[1], slice) \
                and all(k == slice(None) for k in key[2:]) and self.item_shape:
            lo, hi, step = key[1].indices(self.item_shape[0])
            if step != 1:
                raise IndexError(f"{self.path}: a part of each item needs a step of 1, got {key[1]}")
            out = np.empty((self._items, max(0, hi - lo), *self.item_shape[1:]), dtype=np.float32)
            if out.size:
                per_part = self._item_bytes // self.item_shape[0]
                self._read_runs(np.arange(self._items), np.ones(self._items, np.int64), lo * per_part, out)
            return out
        indices = np.asarray(key)
        if indices.dtype.kind not in "iu" or indices.ndim > 1:
            raise IndexError(f"{self.path}: index with a slice, [:, lo:hi] or integer indices, got {key!r}")
        if indices.ndim == 0:
            return self[indices.reshape(1)][0]
        if indices.size and (indices.min() < 0 or indices.max() >= self._items):
            raise IndexError(f"{self.path}: item index out of range 0..{self._items - 1}")
        unique, inverse = np.unique(indices, return_inverse=True)
        out = np.empty((len(unique), *self.item_shape), dtype=np.float32)
        if len(unique):
            run_starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
            counts = np.diff(np.append(run_starts, len(unique)))
            self._read_runs(unique[run_starts], counts, 0, out)
        return out[inverse.reshape(-1)]

    def reshape(self, *shape: int) -> ArrayFile:
        """The same file read as (-1, *shape[1:]) items, e.g. (n, P, d) -> (n * P, d) rows."""
        view = ArrayFile.__new__(ArrayFile)
        view.path, view.item_shape, view._file = self.path, tuple(shape[1:]), self._file
        view._items = self._items * self._item_bytes // view._item_bytes
        return view

    def _block_items(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
        return max(1, block_bytes // self._item_bytes)

    def take(self, items: np.ndarray, path: str | os.PathLike) -> ArrayFile:
        """A new file at ``path`` holding the given items (int64 indices, in that order), copied in blocks."""
        out = ArrayFile(path, self.item_shape)
        step = self._block_items()
        for start in range(0, len(items), step):
            out.append(self[np.asarray(items[start : start + step])])
        return out

    def extend(self, other: ArrayFile) -> None:
        """Append all items of ``other`` (same item shape), copied in blocks."""
        step = other._block_items()
        for start in range(0, len(other), step):
            self.append(other[start : start + step])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __getstate__(self) -> dict:
        if self._file is not None and not self._file.closed:
            self._file.flush()  # a task in another process reads what was written so far
        return {"path": self.path, "item_shape": self.item_shape, "_items": self._items, "_file": None}

    def __enter__(self) -> ArrayFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StoreChain:
    """Several stores read as one: rows of store j follow those of store j - 1 (e.g. image shards)."""

    def __init__(self, stores: list[FeatureStore]):
        self.stores = stores
        self.offsets = np.cumsum([0] + [len(store) for store in stores])
        self.dim = stores[0].dim

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        out = np.empty((len(indices), self.dim), dtype=np.float32)
        owner = np.searchsorted(self.offsets, indices, side="right") - 1
        for j in np.unique(owner):
            here = owner == j
            out[here] = self.stores[j].gather(indices[here] - self.offsets[j])
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.gather(np.arange(max(0, start), min(stop, len(self))))


class ImageSubset:
    """The rows of some images of a store, renumbered: image j of the subset is image ``images[j]``.

    Each image owns ``rows_per_image`` consecutive rows; ``gather`` takes
    subset row numbers.
    """

    def __init__(self, store: FeatureStore | StoreChain, images: np.ndarray, rows_per_image: int):
        self.store, self.images, self.rows_per_image = store, np.asarray(images, dtype=np.int64), rows_per_image

    def __len__(self) -> int:
        return len(self.images) * self.rows_per_image

    @property
    def dim(self) -> int:
        return self.store.dim

    def gather(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        image, offset = np.divmod(indices, self.rows_per_image)
        return self.store.gather(self.images[image] * self.rows_per_image + offset)


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

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None (missing, or damaged: then removed, to be recomputed)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self._path(key), buffer.getvalue())
