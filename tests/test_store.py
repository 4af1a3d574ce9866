import pickle

import numpy as np
import pytest

from tailedcore import store as store_module
from tailedcore.store import ArrayFile, FeatureCache, ImageSubset, StoreChain


@pytest.mark.parametrize("gap_bytes", [0, 48 * 5, 2**20])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_patch_rows_read_back_whatever_the_gap_merged_into_one_read(tmp_path, monkeypatch, gap_bytes, dtype):
    """Rows as a patch store holds them: appended in batches, read back as float32 by slices and by indices
    (sorted or not, repeated), with spans cut at gaps and at blocks."""
    monkeypatch.setattr(store_module, "GAP_BYTES", gap_bytes)
    monkeypatch.setattr(store_module, "DEFAULT_BLOCK_BYTES", 48 * 50)  # blocks of 50 float32 rows
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((1000, 12)).astype(np.float32)
    expected = rows.astype(dtype).astype(np.float32)
    store = ArrayFile(tmp_path / "rows.f32", (12,), dtype=dtype)
    for start in range(0, 1000, 300):
        store.append(rows[start : start + 300])
    assert store.shape == (1000, 12)
    np.testing.assert_array_equal(store[990:2000], expected[990:])
    picks = np.concatenate([rng.integers(0, 1000, 500), np.arange(100, 400), [999, 0, 0]])
    got = store[picks]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected[picks])
    assert store[np.empty(0, np.int64)].shape == (0, 12)
    chain = StoreChain([store, store])
    np.testing.assert_array_equal(chain[np.array([1999, 3, 1000])], expected[[999, 3, 0]])
    np.testing.assert_array_equal(chain[995:1005], np.concatenate([expected[995:], expected[:5]]))
    subset = ImageSubset(store, np.array([9, 2]), rows_per_image=100)
    np.testing.assert_array_equal(subset[np.array([0, 199])], expected[[900, 299]])
    store.close()
    assert (tmp_path / "rows.f32").stat().st_size == rows.astype(dtype).nbytes
    with pytest.raises(ValueError, match="store dtype='int8'"):
        ArrayFile(tmp_path / "bad.f32", (12,), dtype="int8")


def test_cache_keeps_named_arrays_and_drops_a_damaged_entry(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    arrays = {"patches": np.arange(12, dtype=np.float32).reshape(3, 4), "reasons": np.asarray(["a", "bc"])}
    cache.save("k", arrays)
    loaded = cache.load("k")
    assert set(loaded) == set(arrays) and all(np.array_equal(loaded[n], arrays[n]) for n in arrays)
    assert cache.load("missing") is None
    (tmp_path / "cache" / "k.npz").write_bytes(b"not a zip file")
    assert cache.load("k") is None and not (tmp_path / "cache" / "k.npz").exists()


def test_array_file_reads_like_the_array_it_holds(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.standard_normal((30, 7, 5)).astype(np.float32)
    with ArrayFile(tmp_path / "a.f32", (7, 5)) as stored:
        assert stored.shape == (0, 7, 5) and stored[:].shape == (0, 7, 5)
        for start in range(0, 30, 8):
            stored.append(array[start : start + 8])
        assert stored.shape == (30, 7, 5) and stored.ndim == 3
        np.testing.assert_array_equal(stored[:, 2:5, :], array[:, 2:5, :])
        picks = rng.integers(0, 30, 12)
        np.testing.assert_array_equal(stored[picks], array[picks])
        rows = stored.reshape(-1, 5)
        assert rows.shape == (210, 5)
        np.testing.assert_array_equal(rows[picks * 7 + 3], array.reshape(-1, 5)[picks * 7 + 3])
        kept = stored.take(np.array([29, 0, 4]), tmp_path / "kept.f32")
        np.testing.assert_array_equal(kept[:], array[[29, 0, 4]])
        kept.extend(stored)
        np.testing.assert_array_equal(kept[3:], array)
        copy = pickle.loads(pickle.dumps(stored))  # what an engine task gets
        np.testing.assert_array_equal(copy[5], array[5])
        kept.close()
    with ArrayFile(tmp_path / "a.f32", (7, 5), existing=True) as reopened:
        np.testing.assert_array_equal(reopened[:], array)


def test_array_file_refuses_what_it_cannot_read(tmp_path):
    with ArrayFile(tmp_path / "a.f32", (3, 2)) as stored:
        stored.append(np.zeros((4, 3, 2), np.float32))
        with pytest.raises(IndexError, match="out of range 0..3"):
            stored[np.array([0, 4])]
        with pytest.raises(IndexError, match="a.f32: index with a slice"):
            stored[0.5]
        with pytest.raises(IndexError, match="step of 1"):
            stored[:, ::2]


def test_a_float16_file_keeps_its_dtype_through_copies_views_and_tasks(tmp_path):
    items = np.random.default_rng(2).standard_normal((50, 4, 2)).astype(np.float32)
    half = items.astype(np.float16).astype(np.float32)
    with ArrayFile(tmp_path / "half.f16", (4, 2), dtype="float16") as store:
        store.append(items)
        np.testing.assert_array_equal(store[:, 1:3], half[:, 1:3])
        np.testing.assert_array_equal(store.reshape(-1, 2)[np.array([7, 0])], half.reshape(-1, 2)[[7, 0]])
        copied = store.take(np.array([49, 3, 3]), tmp_path / "taken.f16")
        np.testing.assert_array_equal(copied[:], half[[49, 3, 3]])
        assert (tmp_path / "taken.f16").stat().st_size == 3 * 8 * 2
        copied.close()
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(store))[49], half[49])
    assert (tmp_path / "half.f16").stat().st_size == 50 * 8 * 2


def test_array_file_reports_a_file_cut_short(tmp_path):
    with ArrayFile(tmp_path / "a.f32", (4,)) as stored:
        stored.append(np.ones((10, 4), np.float32))
        stored._file.flush()
        with open(tmp_path / "a.f32", "r+b") as handle:
            handle.truncate(4 * 4 * 7)  # another process cut the file after 7 items
        np.testing.assert_array_equal(stored[:7], np.ones((7, 4)))
        with pytest.raises(OSError, match="a.f32: file ends before item 10"):
            stored[5:10]


def test_the_read_benchmark_writes_a_store_and_times_its_reads(tmp_path):
    from .conftest import benchmark_module

    with benchmark_module("array_reads") as harness:
        store = harness.write_store(tmp_path / "s.f32", 1000, 8, 0)
        assert store.shape == (1000, 8)
        assert harness.timed_reads(store, [np.array([3, 500, 501]), np.arange(10)], repeats=2) > 0
        store.close()


def test_indices_of_a_small_integer_type_read_like_int64_ones(tmp_path):
    rows = np.arange(300 * 4, dtype=np.float32).reshape(300, 4)
    with ArrayFile(tmp_path / "a.f32", (4,)) as stored:
        stored.append(rows)
        for dtype in (np.uint8, np.int8, np.int16):
            picks = np.array([120, 3, 3, 0, 127], dtype=dtype)
            np.testing.assert_array_equal(stored[picks], rows[picks.astype(np.int64)])


def test_a_cut_short_entry_is_dropped_and_recomputed(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    cache.save("k", {"patches": np.ones((64, 64), np.float32)})
    entry = tmp_path / "cache" / "k.npz"
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # a zip whose end is missing
    assert cache.load("k") is None and not entry.exists()
