import numpy as np
import pytest

from tailedcore import lof
from tailedcore.lof import inlier_mask, patchwise_lof_scores
from tailedcore.store import ArrayFile


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
