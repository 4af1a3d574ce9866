import pickle

import numpy as np
import pytest

from tailedcore.store import ArrayFile, FeatureCache, FeatureStore


def test_append_read_gather(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((1000, 12)).astype(np.float32)
    store = FeatureStore(tmp_path / "rows.f32", 12)
    for start in range(0, 1000, 300):
        store.append(rows[start : start + 300])
    assert store.shape == (1000, 12)
    np.testing.assert_array_equal(store.read(990, 2000), rows[990:])
    np.testing.assert_array_equal(np.concatenate([store.read(s, s + 128) for s in range(0, 1000, 128)]), rows)
    picks = rng.integers(0, 1000, 500)
    np.testing.assert_array_equal(store.gather(picks), rows[picks])
    assert store.gather(np.empty(0, np.int64)).shape == (0, 12)
    store.close()


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


def test_a_float16_store_holds_half_the_bytes_and_reads_float32(tmp_path):
    rows = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float32)
    with FeatureStore(tmp_path / "half.f16", 8, dtype="float16") as store:
        store.append(rows)
        got = store.gather(np.array([49, 3, 3]))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, rows[[49, 3, 3]].astype(np.float16).astype(np.float32))
    assert (tmp_path / "half.f16").stat().st_size == 50 * 8 * 2
    with pytest.raises(ValueError, match="store dtype='int8'"):
        FeatureStore(tmp_path / "x", 8, dtype="int8")


def test_array_file_reports_a_file_cut_short(tmp_path):
    with ArrayFile(tmp_path / "a.f32", (4,)) as stored:
        stored.append(np.ones((10, 4), np.float32))
        stored._file.flush()
        with open(tmp_path / "a.f32", "r+b") as handle:
            handle.truncate(4 * 4 * 7)  # another process cut the file after 7 items
        np.testing.assert_array_equal(stored[:7], np.ones((7, 4)))
        with pytest.raises(OSError, match="a.f32: file ends before item 10"):
            stored[5:10]
