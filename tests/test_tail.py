import numpy as np
import pytest

from tailedcore.tail import (
    elbow,
    estimate_class_sizes,
    group_sizes,
    max_k,
    row_thresholds,
    select_tail,
    share_limit,
    tail_sampler,
)


def clustered_embeddings(sizes, dim=64, spread=0.15, seed=0):
    """Unit-ish class centres in random directions, images = centre + small noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    scale = np.linalg.norm(centres[labels], axis=1, keepdims=True) / np.sqrt(dim)
    x = centres[labels] + spread * rng.standard_normal((len(labels), dim)) * scale
    return x, labels


def test_recovers_small_classes():
    sizes = [200, 120, 60, 5, 3, 1]
    x, labels = clustered_embeddings(sizes)
    estimate = tail_sampler(x)
    tail_true = np.flatnonzero(np.isin(labels, [3, 4, 5]))
    np.testing.assert_array_equal(estimate.tail_indices, tail_true)
    np.testing.assert_array_equal(select_tail(x), tail_true)
    # Class sizes of the large classes are estimated in the right range.
    for cls, size in enumerate(sizes[:3]):
        est = np.median(estimate.class_sizes[labels == cls])
        assert 0.5 * size <= est <= 1.2 * size


def test_thresholds_hand_checked():
    # One row: sims [1.0, 0.9, 0.8, -0.2]; min -0.2 -> half-angle bound cos(acos(-0.2)/2) = 0.632;
    # candidates above it [0.8, 0.9, 1.0]; floor(0.85 * 3) = 2 -> C[3 - 2] = 0.9.
    s = np.array([[1.0, 0.9, 0.8, -0.2]] * 4)
    np.testing.assert_allclose(row_thresholds(s, quantize=False), [0.9] * 4)


def test_group_sizes_hand_checked():
    # Sizes: three images saying 3, two saying 2, one saying 1 (sorted 1,2,2,3,3,3).
    # s=1 -> group round(mean[1]) = 1; s=2 -> round(mean[2,2]) = 2; s=3 -> round(mean[3,3,3]) = 3.
    np.testing.assert_array_equal(group_sizes([3, 3, 3, 2, 2, 1]), [3, 2, 1])
    # Leftover smaller than the next size joins the last group: sizes 2,2,5 -> group 2, then 1 image < 5.
    np.testing.assert_array_equal(group_sizes([2, 2, 5]), [3])
    np.testing.assert_array_equal(group_sizes([0.2, 1.4]), [1, 1])  # at least 1, rounded


def test_elbow_and_share_rule_hand_checked():
    groups = [100, 90, 80, 10, 5, 3, 1]
    # Line from (0, 100) to (6, 1); the farthest point is (3, 10) -> elbow 10.
    assert elbow(groups) == 10
    # 15% of 289 = 43 images: 1 + 3 + 5 + 10 = 19 <= 43 but + 80 > 43 -> largest small group 10.
    assert share_limit(groups) == 10
    assert max_k(groups) == 10
    assert share_limit([50, 50]) == 50  # even the smallest group is over 15%: its size


def test_degenerate_inputs():
    one = tail_sampler(np.ones((1, 8)))
    np.testing.assert_array_equal(one.class_sizes, [1])
    np.testing.assert_array_equal(one.tail_indices, [0])
    same = estimate_class_sizes(np.ones((10, 4)))
    np.testing.assert_array_equal(same, [10] * 10)  # identical images: one class of 10
    assert elbow([7, 7, 7]) == 7 and max_k([7, 7, 7]) == 7
    assert elbow([4]) == 4
    with pytest.raises(ValueError, match="NaN"):
        estimate_class_sizes(np.array([[np.nan, 1.0], [1.0, 0.0]]))
