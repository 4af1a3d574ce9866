import numpy as np

from tailedcore.store import FeatureCache, FeatureStore


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
