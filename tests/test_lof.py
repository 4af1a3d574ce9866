import numpy as np
import pytest

from tailedcore import lof
from tailedcore.lof import (
    fence_inlier_mask,
    fence_shares,
    gated_inlier_mask,
    image_relative,
    inlier_mask,
    patchwise_lof_scores,
)
from tailedcore.policies import LOFFilter
from tailedcore.store import ArrayFile
from tailedcore.timing import StageTimer


def test_planted_outliers_are_dropped():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((40, 9, 8)).astype(np.float32)
    planted = [(3, 0), (17, 4), (25, 8), (38, 2)]
    for image, location in planted:
        features[image, location] += 12.0
    scores = patchwise_lof_scores(features, k=6)
    keep = inlier_mask(scores, drop=0.15)
    assert scores.shape == (40, 9)
    for image, location in planted:
        assert not keep[image, location]
        assert scores[image, location] == scores[:, location].max()
    assert abs(keep.mean() - 0.85) < 0.01


def test_ties_and_degenerate():
    assert patchwise_lof_scores(np.zeros((1, 4, 3))).tolist() == [[1.0] * 4]
    equal = np.ones((5, 5))
    assert inlier_mask(equal).all()  # nothing is more outlying than anything else
    scores = np.array([1.0] * 9 + [3.0])
    np.testing.assert_array_equal(inlier_mask(scores, 0.15), [True] * 9 + [False])
    with pytest.raises(ValueError):
        inlier_mask(scores, 1.0)
    assert inlier_mask(scores, 0.0).all()


def test_scores_from_a_file_read_in_location_blocks_are_those_of_the_array(tmp_path, monkeypatch):
    features = np.random.default_rng(3).standard_normal((25, 11, 6)).astype(np.float32)
    with ArrayFile(tmp_path / "projected.f32", (11, 6)) as stored:
        stored.append(features)
        monkeypatch.setattr(lof, "_BLOCK_BYTES", 4 * 25 * 6 * 3)  # blocks of 3 locations
        np.testing.assert_array_equal(patchwise_lof_scores(stored, k=4), patchwise_lof_scores(features, k=4))


def test_image_scale_spares_another_product_and_still_drops_a_defect():
    """40 images of one product (one with a defect at 2 of 16 locations) and one image of another product:
    the global quantile drops the other product's patches, the image-relative one keeps them and drops the defect."""
    rng = np.random.default_rng(1)
    features = rng.standard_normal((41, 16, 8)).astype(np.float32)
    features[40] += 6.0  # another product: unlike the others at every location
    features[5, [3, 9]] += 12.0  # a defect in one region of image 5
    scores = patchwise_lof_scores(features, k=6)
    paper = LOFFilter(drop=0.15).apply(features, StageTimer()).keep
    spared = LOFFilter(drop=0.15, scale="image").apply(features, StageTimer()).keep
    assert paper[40].mean() < 0.2
    assert spared[40].mean() > 0.7
    assert not spared[5, [3, 9]].any()
    assert abs(spared.mean() - 0.85) < 0.01
    np.testing.assert_allclose(image_relative(scores)[40], scores[40] / np.median(scores[40]), rtol=1e-6)


def test_image_relative_wants_a_grid_per_image():
    with pytest.raises(ValueError, match="scores"):
        image_relative(np.ones(5))


def test_product_scale_drops_the_share_of_each_product_and_still_drops_a_defect():
    """30 images of a plain product (one with a defect), 10 of a varied one and one image of a third: each
    product loses the drop share of its own patches, and the defect is among them."""
    rng = np.random.default_rng(2)
    features = rng.standard_normal((41, 16, 8)).astype(np.float32)
    features[30:40] *= 3.0  # a varied product: its patches are outlying all over under the global quantile
    features[40] += 6.0  # a product of one image
    features[5, [3, 9]] += 12.0
    products = np.array([0] * 30 + [1] * 10 + [2])
    paper = LOFFilter(drop=0.15).apply(features, StageTimer()).keep
    by_product = LOFFilter(drop=0.15, scale="product").apply(features, StageTimer(), products=products).keep
    assert paper[40].mean() < 0.2 and paper[30:40].mean() < 0.85 - 0.05
    for product in range(3):
        assert abs(by_product[products == product].mean() - 0.85) <= 1 / 16  # one patch of 16
    assert not by_product[5, [3, 9]].any()
    with pytest.raises(ValueError, match="scale='product' needs the product of every image"):
        LOFFilter(scale="product").apply(features, StageTimer())


def test_fence_share_drops_only_the_outliers_of_a_plain_product_and_at_most_the_drop_share():
    """A plain product (one image with a defect at 2 of 16 locations) drops far less than the fixed share but
    still the defect; scores that are all outlying are cut at the drop share."""
    rng = np.random.default_rng(3)
    features = rng.standard_normal((40, 16, 8)).astype(np.float32)
    features[5, [3, 9]] += 12.0
    products = np.zeros(40, dtype=np.int64)
    fence = LOFFilter(drop=0.15, scale="product", share="fence").apply(features, StageTimer(), products=products).keep
    assert 1.0 - fence.mean() < 0.1  # about 6% here, against 15% at the fixed share
    assert not fence[5, [3, 9]].any()
    heavy_tail = np.concatenate([np.linspace(1.0, 1.1, 80), np.linspace(5.0, 50.0, 20)])  # 20% far above the rest
    assert abs(fence_inlier_mask(heavy_tail, drop=0.15).mean() - 0.85) <= 0.01
    assert fence_inlier_mask(heavy_tail, drop=0.0).all()
    with pytest.raises(ValueError, match="drop=1.0"):
        fence_inlier_mask(heavy_tail, drop=1.0)


def _scattered_scores(seed: int = 4) -> np.ndarray:
    """LOF-like scores of 40 images x 16 locations: plain (1.0-1.1), each image with 0-2 rare normal patches
    (1.18: above the inner fence, below the far-out one), image 5 with a defect over 6 locations (3.0) and
    image 30 with one far-out patch (4.0) at location 15."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(1.0, 1.1, (40, 16))
    for image in range(40):
        scores[image, rng.choice(15, size=rng.integers(0, 3), replace=False)] = 1.18
    scores[5, :6] = 3.0
    scores[30, 15] = 4.0
    return scores


def test_gated_share_drops_a_defect_region_but_spares_scattered_rare_patches_of_clean_images():
    scores = _scattered_scores()
    rare = scores == 1.18
    rare[5] = False
    gated = gated_inlier_mask(scores, drop=0.15)
    assert not gated[5, :6].any()
    assert gated[rare].all()
    assert not gated[30, 15]  # far out: dropped wherever it is
    without_far_out = gated_inlier_mask(scores, drop=0.15, far_out=False)
    assert without_far_out[30, 15] and not without_far_out[5, :6].any()
    assert not fence_inlier_mask(scores, drop=0.15)[rare].any()  # the fence alone drops them with the defect


def test_gated_share_never_drops_more_than_the_drop_share_and_checks_its_input():
    heavy_tail = np.concatenate([np.linspace(1.0, 1.1, 80), np.linspace(5.0, 50.0, 20)]).reshape(10, 10)
    assert 1.0 - gated_inlier_mask(heavy_tail, drop=0.15).mean() <= 0.15 + 1e-9
    assert gated_inlier_mask(heavy_tail, drop=0.0).all()
    with pytest.raises(ValueError, match="n_images, n_locations"):
        gated_inlier_mask(heavy_tail.ravel())
    with pytest.raises(ValueError, match="drop=1.0"):
        gated_inlier_mask(heavy_tail, drop=1.0)


def test_lof_filter_with_the_gated_share_drops_a_planted_defect_per_product():
    rng = np.random.default_rng(5)
    features = rng.standard_normal((40, 16, 8)).astype(np.float32)
    features[5, :6] += 12.0
    products = np.repeat([0, 1], 20)
    keep = LOFFilter(drop=0.15, scale="product", share="gated").apply(features, StageTimer(), products=products).keep
    assert not keep[5, :6].any()
    assert 1.0 - keep[products == 1].mean() < 0.05


def test_lof_filter_shares_gated_and_gated_only_differ_by_the_far_out_patches_alone():
    rng = np.random.default_rng(6)
    features = rng.standard_normal((30, 16, 8)).astype(np.float32)
    features[7, 4] += 12.0  # one far-out patch in an otherwise plain image
    products = np.zeros(30, dtype=np.int64)
    scores, gated, _ = LOFFilter(scale="product", share="gated").apply(features, StageTimer(), products=products)
    only = LOFFilter(scale="product", share="gated-only").apply(features, StageTimer(), products=products).keep
    np.testing.assert_array_equal(only, gated_inlier_mask(scores, far_out=False))
    assert not gated[7, 4] and only[7, 4]


def test_fence_shares_and_unlike_images_are_those_with_most_patches_above_the_fence():
    scores = _scattered_scores()
    scores[12] = 2.5  # another product merged in: above the fence at every location
    shares = fence_shares(scores, drop=0.15)
    assert shares[12] == 1.0 and shares[5] == 6 / 16  # the defect covers 6 of 16 locations: a region
    unlike = LOFFilter(drop=0.15, unlike_share=0.5).unlike(scores)
    assert np.flatnonzero(unlike).tolist() == [12]
    assert LOFFilter(drop=0.15, unlike_share=0.3).unlike(scores)[5]
    assert not LOFFilter(drop=0.15).unlike(scores).any()  # no unlike share: none
    assert not fence_shares(scores, drop=0.0).any()  # nothing is dropped, so nothing is above
    with pytest.raises(ValueError, match="n_images, n_locations"):
        fence_shares(scores.ravel(), drop=0.15)


def test_lof_filter_with_an_unlike_share_keeps_a_merged_product_whole_and_still_drops_a_defect():
    rng = np.random.default_rng(7)
    features = rng.standard_normal((40, 16, 8)).astype(np.float32)
    features[5, :6] += 12.0  # a defect in one region
    features[9] += 12.0  # an image unlike the others everywhere
    products = np.zeros(40, dtype=np.int64)
    gated = LOFFilter(scale="product", share="gated").apply(features, StageTimer(), products=products).keep
    unlike = LOFFilter(scale="product", share="gated", unlike_share=0.5)
    result = unlike.apply(features, StageTimer(), products=products)
    assert np.flatnonzero(result.unlike).tolist() == [9]
    spared = result.keep
    assert not gated[9].all()
    assert spared[9].all()
    assert not spared[5, :6].any()
    np.testing.assert_array_equal(np.delete(spared, 9, axis=0), np.delete(gated, 9, axis=0))
    with pytest.raises(ValueError, match="unlike_share"):
        LOFFilter(unlike_share=0.0).check()
