import numpy as np

from tailedcore.store import FeatureStore


def test_append_read_gather(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((1000, 12)).astype(np.float32)
    store = FeatureStore(tmp_path / "rows.f32", 12)
    for start in range(0, 1000, 300):
        store.append(rows[start : start + 300])
    assert store.shape == (1000, 12)
    np.testing.assert_array_equal(store.read(990, 2000), rows[990:])
    blocks = list(store.iter_blocks(128))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), rows)
    picks = rng.integers(0, 1000, 500)
    np.testing.assert_array_equal(store.gather(picks), rows[picks])
    assert store.gather(np.empty(0, np.int64)).shape == (0, 12)
    store.close()
