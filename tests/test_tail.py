import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform

from tailedcore import tail
from tailedcore.tail import (
    LinkageTailSampler,
    TailInputs,
    elbow,
    estimate_class_sizes,
    group_sizes,
    make_tail_estimator,
    max_k,
    row_thresholds,
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
    np.testing.assert_array_equal(tail_sampler(x).tail_indices, tail_true)
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


def planted_mix(sizes, defects_per_head=0.1, dim=64, seed=0):
    """Clustered embeddings and mean patches; the classes of 20+ images get defective members.

    A defective image is a member of its class moved by a local change: three times the class
    spread along a random direction, far less than the distance between classes.
    Returns (TailInputs, class labels, defective flags).
    """
    rng = np.random.default_rng(seed)
    embeddings, labels = clustered_embeddings(sizes, dim, spread=0.05, seed=seed)
    patches, _ = clustered_embeddings(sizes, dim // 2, spread=0.05, seed=seed + 1)
    defective = np.zeros(len(labels), bool)
    for cls, size in enumerate(sizes):
        if size >= 20:
            members = np.flatnonzero(labels == cls)
            defective[rng.choice(members, size=int(defects_per_head * size), replace=False)] = True
    for x in (embeddings, patches):
        scale = np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(x.shape[1])
        x[defective] += 0.15 * scale[defective] * rng.standard_normal((defective.sum(), x.shape[1]))
    return TailInputs(embeddings, patches), labels, defective


def test_linkage_finds_the_tail_and_keeps_planted_defects_out():
    sizes = [300, 150, 80, 12, 4, 1, 1]
    inputs, labels, defective = planted_mix(sizes)
    estimate = LinkageTailSampler().estimate(inputs)
    np.testing.assert_array_equal(estimate.class_sizes, np.asarray(sizes)[labels])
    np.testing.assert_array_equal(estimate.tail_indices, np.flatnonzero(labels >= 3))
    assert not np.isin(np.flatnonzero(defective), estimate.tail_indices).any()
    np.testing.assert_array_equal(estimate.groups, sorted(sizes, reverse=True))


def test_linkage_cap_and_the_papers_rule():
    # Sizes 300, 150, 40, 12: the elbow alone (max_tail_class=None) puts the 40-image class in the tail.
    inputs, labels, _ = planted_mix([300, 150, 40, 12], defects_per_head=0.0)
    assert LinkageTailSampler(max_tail_class=None).estimate(inputs).max_k == 40
    capped = LinkageTailSampler().estimate(inputs)
    assert capped.max_k == 19
    np.testing.assert_array_equal(capped.tail_indices, np.flatnonzero(labels == 3))


def test_linkage_on_one_class_has_no_tail():
    inputs, _, _ = planted_mix([120])
    estimate = LinkageTailSampler().estimate(inputs)
    assert len(estimate.tail_indices) == 0 and estimate.groups.tolist() == [120]


@pytest.mark.parametrize("features", ["embedding", "patches"])
def test_linkage_on_one_kind_of_feature(features):
    inputs, labels, _ = planted_mix([100, 50, 3, 1], defects_per_head=0.0)
    estimate = LinkageTailSampler(features=features).estimate(inputs)
    np.testing.assert_array_equal(estimate.tail_indices, np.flatnonzero(labels >= 2))


def test_linkage_distance_is_the_cut():
    # Three points on a line in 2-D directions: 0 and 1 are 0.02 apart, 2 is far from both.
    x = np.array([[1.0, 0.0], [np.cos(0.2), np.sin(0.2)], [0.0, 1.0]])
    inputs = TailInputs(x, x)
    assert LinkageTailSampler(distance=0.05).estimate(inputs).class_sizes.tolist() == [2, 2, 1]
    assert LinkageTailSampler(distance=0.01).estimate(inputs).class_sizes.tolist() == [1, 1, 1]
    assert LinkageTailSampler(distance=1.5).estimate(inputs).class_sizes.tolist() == [3, 3, 3]


def test_linkage_degenerate_inputs():
    one = LinkageTailSampler().estimate(TailInputs(np.ones((1, 4)), np.ones((1, 3))))
    assert one.class_sizes.tolist() == [1] and one.tail_indices.tolist() == [0]
    zeros = np.zeros((3, 4))
    zeros[0, 0] = 1.0
    estimate = LinkageTailSampler().estimate(TailInputs(zeros, zeros))  # all-zero rows give no NaN
    assert estimate.class_sizes.tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match="mean_patches: 2 rows for 3"):
        LinkageTailSampler().estimate(TailInputs(zeros, zeros[:2]))


@pytest.mark.parametrize("params, message", [
    ({"distance": 0.0}, "LinkageTailSampler.distance=0.0"), ({"features": "pixels"}, "features='pixels'"),
    ({"max_tail_class": 0}, "max_tail_class=0"), ({"share": 1.5}, "share=1.5"), ({"core": 0}, "core=0"),
])
def test_linkage_parameters_are_checked(params, message):
    with pytest.raises(ValueError, match=message):
        LinkageTailSampler(**params).estimate(TailInputs(np.eye(3), np.eye(3)))


def test_paper_estimator_is_tail_sampler():
    x, _ = clustered_embeddings([200, 120, 60, 5, 3, 1])
    expected = tail_sampler(x, 0.8, 0.2)
    estimate = make_tail_estimator("paper", keep=0.8, share=0.2).estimate(TailInputs(x, np.zeros((len(x), 2))))
    np.testing.assert_array_equal(estimate.class_sizes, expected.class_sizes)
    np.testing.assert_array_equal(estimate.tail_indices, expected.tail_indices)
    with pytest.raises(ValueError, match="PaperTailSampler.keep=0.0"):
        make_tail_estimator("paper", keep=0.0).estimate(TailInputs(x, x))
    with pytest.raises(ValueError, match="tail_estimator='knn'"):
        make_tail_estimator("knn")


def test_linkage_clusters_in_row_blocks_are_single_linkage_cut_at_the_distance(monkeypatch):
    inputs, _, _ = planted_mix([60, 25, 7, 3, 1, 1], seed=4)
    sampler = LinkageTailSampler(distance=0.05)
    condensed = sum(pdist(unit, "sqeuclidean") / 2.0 for unit in sampler._unit_rows(inputs)) / 2
    expected = fcluster(linkage(condensed, method="single"), t=sampler.distance, criterion="distance")
    monkeypatch.setattr(tail, "_BLOCK_BYTES", 8 * len(expected) * 7)  # blocks of 7 rows
    found = sampler.clusters(inputs)
    # The same partition: a label maps to exactly one label of the other.
    pairs = set(zip(found.tolist(), expected.tolist()))
    assert len(pairs) == len(set(found.tolist())) == len(set(expected.tolist())) > 3


def test_linkage_core_keeps_an_image_with_one_close_neighbour_out_of_its_cluster():
    # Directions in 2-D: a cluster of 11 images 0.05 rad apart, and one image 0.15 rad beyond its last
    # (cosine distance 0.011, within the cut of 0.02), whose next nearest images are 0.2 rad or more away.
    angles = np.r_[np.arange(11) * 0.05, 0.65]
    x = np.c_[np.cos(angles), np.sin(angles)]
    inputs = TailInputs(x, x)
    assert LinkageTailSampler(distance=0.02).estimate(inputs).class_sizes.tolist() == [12] * 12
    robust = LinkageTailSampler(distance=0.02, core=3).estimate(inputs)
    assert robust.class_sizes.tolist() == [11] * 11 + [1] and robust.tail_indices.tolist() == [11]
    two = TailInputs(x[:2], x[:2])  # fewer other images than core: the nearest one counts
    assert LinkageTailSampler(distance=0.02, core=3).estimate(two).class_sizes.tolist() == [2, 2]


def test_linkage_core_in_row_blocks_is_single_linkage_of_mutual_reachability(monkeypatch):
    inputs, _, _ = planted_mix([60, 25, 7, 3, 1, 1], seed=4)
    sampler = LinkageTailSampler(distance=0.05, core=3)
    square = sum(squareform(pdist(unit, "sqeuclidean")) / 2.0 for unit in sampler._unit_rows(inputs)) / 2
    core = np.sort(square + np.diag(np.full(len(square), np.inf)), axis=1)[:, 2]
    reach = np.maximum(square, np.maximum(core[:, None], core[None, :]))
    np.fill_diagonal(reach, 0.0)
    expected = fcluster(linkage(squareform(reach, checks=False), method="single"), t=sampler.distance,
                        criterion="distance")
    monkeypatch.setattr(tail, "_BLOCK_BYTES", 8 * len(expected) * 7)  # blocks of 7 rows
    found = sampler.clusters(inputs)
    pairs = set(zip(found.tolist(), expected.tolist()))
    assert len(pairs) == len(set(found.tolist())) == len(set(expected.tolist())) > 3
    assert len(set(found.tolist())) > len(set(LinkageTailSampler(distance=0.05).clusters(inputs).tolist()))


def test_class_sizes_in_blocks_of_rows_are_those_of_one_block(monkeypatch):
    x, _ = clustered_embeddings([40, 20, 9, 3, 1], spread=0.3, seed=2)
    whole = estimate_class_sizes(x)
    monkeypatch.setattr(tail, "_BLOCK_BYTES", 8 * len(x) * 6)  # blocks of 6 rows, then of 6 columns
    np.testing.assert_array_equal(estimate_class_sizes(x), whole)
    assert len(set(whole.tolist())) > 2
