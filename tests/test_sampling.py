import numpy as np
import pytest

from tailedcore.sampling import (
    greedy_coreset,
    greedy_coreset_reference,
    project,
    random_projection,
    two_round_coreset,
)


def brute_force_k_center(x, n, start):
    """k-center greedy written from the definition: all pairwise distances in float64."""
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    picks = [start]
    for _ in range(1, n):
        nearest = d[:, picks].min(axis=1)
        nearest[picks] = -1
        picks.append(int(np.argmax(nearest)))
    return np.array(picks)


@pytest.mark.parametrize("seed", range(5))
def test_picks_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((120, 6)).astype(np.float32)
    picks = greedy_coreset(x, 30, start=seed)
    np.testing.assert_array_equal(picks, brute_force_k_center(x, 30, seed))


def test_hand_checked_line():
    # Points on a line. From 0: the farthest is 10, then 5 (distance 5); then 2 and 7 are both 2 away
    # from the picks: the first index (the point 2) wins the tie.
    x = np.array([[0.0], [2.0], [5.0], [10.0], [7.0]], dtype=np.float32)
    np.testing.assert_array_equal(greedy_coreset(x, 4, start=0), [0, 3, 2, 1])


@pytest.mark.parametrize("n_rows,dim,block_rows", [(3000, 128, 256), (2000, 16, 64), (500, 3, 7), (50, 1024, 8)])
def test_identical_to_reference_loop(n_rows, dim, block_rows):
    rng = np.random.default_rng(n_rows)
    x = rng.standard_normal((n_rows, dim)).astype(np.float32)
    x[: n_rows // 3] = x[: n_rows // 3] * 0.05 + 4.0  # a dense cluster far from the rest
    n = max(1, n_rows // 10)
    np.testing.assert_array_equal(greedy_coreset(x, n, 7, block_rows), greedy_coreset_reference(x, n, 7))


def test_identical_on_real_like_offsets_and_ties():
    rng = np.random.default_rng(3)
    ties = np.round(rng.standard_normal((400, 5)) * 2).astype(np.float32)  # many equal distances
    np.testing.assert_array_equal(greedy_coreset(ties, 200, 3, 32), greedy_coreset_reference(ties, 200, 3))
    offset = (rng.standard_normal((300, 8)) * 1e-3 + 1e4).astype(np.float32)
    np.testing.assert_array_equal(greedy_coreset(offset, 60, 0, 16), greedy_coreset_reference(offset, 60, 0))


def test_degenerate_inputs():
    same = np.ones((6, 4), dtype=np.float32)
    picks = greedy_coreset(same, 6, start=2)
    np.testing.assert_array_equal(picks, [2, 0, 1, 3, 4, 5])  # all distinct, first index on ties
    assert greedy_coreset(same, 0).shape == (0,)
    np.testing.assert_array_equal(greedy_coreset(np.zeros((1, 3), np.float32), 1), [0])


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        greedy_coreset(np.array([[0.0], [np.nan]], dtype=np.float32), 1)
    with pytest.raises(ValueError, match="n=5"):
        greedy_coreset(np.zeros((3, 2), np.float32), 5)
    with pytest.raises(ValueError, match="start=3"):
        greedy_coreset(np.zeros((3, 2), np.float32), 2, start=3)
    with pytest.raises(ValueError, match="2-D"):
        greedy_coreset(np.zeros(3, np.float32), 1)


def test_random_projection_is_seeded():
    a, b = random_projection(64, 16, seed=1), random_projection(64, 16, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 16) and a.dtype == np.float32
    assert not np.array_equal(a, random_projection(64, 16, seed=2))


def covering_radius(x, picks):
    """Largest distance from a row of x to its nearest pick."""
    d = ((x[:, None, :] - x[picks][None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d.min(axis=1).max()))


def clustered_rows(n_shards=8, per_shard=150, dim=6, seed=0):
    """Shards of rows around a few shared centres (images of similar content)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, dim)) * 4
    x = centres[rng.integers(5, size=n_shards * per_shard)] + rng.standard_normal((n_shards * per_shard, dim))
    return x.astype(np.float32), [np.arange(i * per_shard, (i + 1) * per_shard) for i in range(n_shards)]


@pytest.mark.parametrize("seed", range(3))
def test_two_round_coreset_covers_like_the_joint_one(seed):
    x, shards = clustered_rows(seed=seed)
    rng = np.random.default_rng(seed)
    picks = two_round_coreset(x, shards, 0.1, rng, block_rows=10**9)
    assert len(picks) == 120 and len(set(picks.tolist())) == 120
    joint = greedy_coreset(x, 120, start=0)
    # k-center greedy is a 2-approximation, so the two can differ by a factor of 2 either way;
    # on data like this the composable coreset stays close to the joint one.
    assert covering_radius(x, picks) <= 1.3 * covering_radius(x, joint)


def test_two_round_coreset_blocks_group_consecutive_shards():
    x, shards = clustered_rows(n_shards=4, per_shard=100)
    # Round 1 keeps 20 rows a shard; blocks of at most 40 picks hold two shards each.
    picks = two_round_coreset(x, shards, 0.1, np.random.default_rng(0), oversample=2.0, block_rows=40)
    assert len(picks) == 40
    assert np.isin(picks[:20], np.arange(200)).all() and np.isin(picks[20:], np.arange(200, 400)).all()
    # A block as large as one shard: one round-2 coreset per shard, each within its shard.
    per_shard = two_round_coreset(x, shards, 0.1, np.random.default_rng(0), block_rows=20)
    for i, shard in enumerate(shards):
        assert np.isin(per_shard[i * 10 : (i + 1) * 10], shard).all()


def test_two_round_coreset_parameters_are_checked():
    x, shards = clustered_rows(n_shards=2, per_shard=10)
    with pytest.raises(ValueError, match="ratio=0"):
        two_round_coreset(x, shards, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="oversample=0.5"):
        two_round_coreset(x, shards, 0.1, np.random.default_rng(0), oversample=0.5)
    assert len(two_round_coreset(x, [], 0.1, np.random.default_rng(0))) == 0


def test_projection_keeps_the_leading_shape_and_matches_the_float64_product():
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((3, 49, 64)).astype(np.float32)
    projection = random_projection(64, 16, seed=1)
    projected = project(rows, projection)
    assert projected.shape == (3, 49, 16) and projected.dtype == np.float32
    np.testing.assert_allclose(projected, rows.astype(np.float64) @ projection.astype(np.float64), rtol=1e-4,
                               atol=1e-5)
