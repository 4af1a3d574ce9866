"""Memory-bank policy building blocks on generated arrays."""

import dataclasses

import numpy as np
import pytest

from tailedcore import policies
from tailedcore.policies import Coreset, TailCoreset
from tailedcore.sampling import greedy_coreset, two_round_coreset
from tailedcore.store import ArrayFile
from tailedcore.tail import TailEstimate
from tailedcore.timing import StageTimer


def tail_rows(n_images=3, rows_per_image=20, views=4, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n_images * rows_per_image * (1 + views), dim)).astype(
        np.float32)


def test_joint_tail_coreset_is_one_coreset_over_every_row():
    rows = tail_rows()
    picks = TailCoreset("joint").select(rows, 3, 20, 4, Coreset(0.1), np.random.default_rng(5), StageTimer(), False)
    start = int(np.random.default_rng(5).integers(len(rows)))
    np.testing.assert_array_equal(picks, greedy_coreset(rows, 30, start=start))


def test_per_image_tail_coreset_picks_within_each_image_and_its_views():
    n_images, per_image, views = 3, 20, 4
    rows = tail_rows(n_images, per_image, views)
    picks = TailCoreset("per-image").select(rows, n_images, per_image, views, Coreset(0.1), np.random.default_rng(5),
                                            StageTimer(), False)
    assert len(picks) == n_images * 10 and len(set(picks.tolist())) == len(picks)
    own_end = n_images * per_image
    rng = np.random.default_rng(5)
    for image in range(n_images):
        own = np.arange(image * per_image, (image + 1) * per_image)
        image_views = own_end + np.arange(image * views * per_image, (image + 1) * views * per_image)
        allowed = np.concatenate([own, image_views])
        chosen = picks[image * 10 : (image + 1) * 10]
        assert np.isin(chosen, allowed).all()
        start = int(rng.integers(len(allowed)))
        np.testing.assert_array_equal(chosen, allowed[greedy_coreset(rows[allowed], 10, start=start)])


def test_unknown_tail_coreset_is_refused_before_reading_images(tmp_path):
    from tailedcore import TailedCore

    with pytest.raises(ValueError, match="TailCoreset.scope='whole': choose from joint, per-image, two-round"):
        TailedCore().set_params(policy__tail_coreset__scope="whole").fit(tmp_path / "no-such-folder")


def test_two_round_tail_coreset_keeps_the_joint_count_from_every_image():
    n_images, per_image, views = 4, 20, 4
    rows = tail_rows(n_images, per_image, views)
    picks = TailCoreset("two-round").select(rows, n_images, per_image, views, Coreset(0.1), np.random.default_rng(5),
                                            StageTimer(), False)
    assert len(picks) == int(0.1 * len(rows)) and len(set(picks.tolist())) == len(picks)
    assert ((picks >= 0) & (picks < len(rows))).all()


def test_coreset_over_its_exact_budget_is_the_composable_one():
    rows = tail_rows(n_images=10, rows_per_image=30, views=0, dim=6)
    exact = Coreset(0.1).select(rows, np.random.default_rng(2), StageTimer())
    np.testing.assert_array_equal(exact, greedy_coreset(rows, 30, start=int(np.random.default_rng(2).integers(300))))
    assert np.array_equal(Coreset(0.1, exact_rows=300).select(rows, np.random.default_rng(2), StageTimer()), exact)
    composable = Coreset(0.1, exact_rows=100).select(rows, np.random.default_rng(2), StageTimer())
    shards = [np.arange(start, start + 100) for start in (0, 100, 200)]
    np.testing.assert_array_equal(composable, two_round_coreset(rows, shards, 0.1, np.random.default_rng(2),
                                                                block_rows=100))
    assert len(composable) == 30 and len(set(composable.tolist())) == 30


def test_coreset_of_a_subset_of_rows_on_disk_is_that_of_the_subset_in_ram(tmp_path):
    rows = tail_rows(n_images=10, rows_per_image=30, views=0, dim=6)
    subset = np.flatnonzero(np.random.default_rng(4).random(300) < 0.8)
    with ArrayFile(tmp_path / "rows.f32", (6,)) as stored:
        stored.append(rows)
        for coreset in (Coreset(0.1), Coreset(0.1, exact_rows=70)):
            in_ram = coreset.select(rows[subset], np.random.default_rng(2), StageTimer())
            on_disk = coreset.select(stored, np.random.default_rng(2), StageTimer(), subset=subset)
            np.testing.assert_array_equal(on_disk, subset[in_ram])


def test_memory_gathered_in_blocks_of_sorted_rows_keeps_the_pick_order(tmp_path, monkeypatch):
    rows = np.random.default_rng(6).standard_normal((40, 5)).astype(np.float32)
    monkeypatch.setattr(policies, "_GATHER_ROWS", 3)
    with ArrayFile(tmp_path / "a.f32", (5,)) as first, ArrayFile(tmp_path / "b.f32", (5,)) as second:
        first.append(rows)
        second.append(rows[::-1])
        picks_a, picks_b = np.array([17, 2, 39, 2, 8, 30, 0]), np.array([5, 1])
        memory = policies._gather([(first, picks_a), (second, picks_b)], StageTimer())
    np.testing.assert_array_equal(memory, np.concatenate([rows[picks_a], rows[::-1][picks_b]]))


def _one_product_with_a_defect_and_another_products_image(folder, n=30, locations=16, dim=8, views_per_image=2):
    """TrainingFeatures of one product of n images (patches in ArrayFiles in ``folder``): image 5 with a defect
    over 6 of its locations, image 9 unlike the others everywhere (another product among them); no tail found."""
    rng = np.random.default_rng(8)
    projected = rng.standard_normal((n, locations, dim)).astype(np.float32)
    projected[5, :6] += 12.0
    projected[9] += 12.0

    def stored(name, rows):
        store = ArrayFile(folder / f"{name}.f32", (dim,))
        store.append(rows)
        return store

    def views(indices):
        made = np.repeat(projected[indices], views_per_image, axis=0)
        return policies.FeatureSet(stored(f"views-{len(indices)}", made.reshape(-1, dim)), made)

    no_tail = TailEstimate(np.full(n, n), np.array([n]), 1, np.array([], dtype=np.int64))
    return policies.TrainingFeatures(stored("patches", projected.reshape(-1, dim)), projected,
                                     embeddings=np.zeros((n, 4)), mean_patches=projected.mean(axis=1), views=views,
                                     views_per_image=views_per_image, products=np.zeros(n, dtype=np.int64),
                                     tail=no_tail)


def test_tailedcore_keeps_an_unlike_image_whole_and_by_default_adds_it_to_the_tail(tmp_path):
    train = _one_product_with_a_defect_and_another_products_image(tmp_path)
    gated = policies.LOFFilter(scale="product", share="gated")
    unlike = policies.LOFFilter(scale="product", share="gated", unlike_share=0.5)
    dropped = policies.TailedCorePolicy(lof=gated).build(train, np.random.default_rng(0)).diagnostics
    spared = policies.TailedCorePolicy(lof=unlike, unlike_tail=False).build(train, np.random.default_rng(0))
    promoted = policies.TailedCorePolicy(lof=unlike).build(train, np.random.default_rng(0))  # unlike_tail: default
    assert dropped["dropped_share"][9] > 0.5 and not dropped["unlike"].any()
    assert np.flatnonzero(spared.diagnostics["unlike"]).tolist() == [9]
    assert spared.diagnostics["dropped_share"][9] == 0 and spared.diagnostics["dropped_share"][5] >= 6 / 16
    assert spared.diagnostics["tail_indices"].tolist() == [] and "tail_memory" not in spared.memory.info
    assert promoted.diagnostics["tail_indices"].tolist() == [9]
    tail_rows = promoted.memory.info["tail_memory"]
    assert tail_rows > 0 and set(promoted.row_images[:tail_rows].tolist()) == {9}
    np.testing.assert_array_equal(promoted.diagnostics["dropped_share"], spared.diagnostics["dropped_share"])


@pytest.mark.parametrize("scope", ["joint", "per-image", "two-round"])
def test_tail_coreset_picks_only_kept_rows_and_counts_only_them(scope):
    n_images, per_image, views = 3, 20, 4
    rows = tail_rows(n_images, per_image, views)
    kept = np.ones(len(rows), dtype=bool)
    kept[n_images * per_image + per_image :] = False  # every view of every image gone but image 0's first
    picks = TailCoreset(scope).select(rows, n_images, per_image, views, Coreset(0.1), np.random.default_rng(5),
                                      StageTimer(), False, kept)
    assert kept[picks].all() and len(set(picks.tolist())) == len(picks)
    every = TailCoreset(scope).select(rows, n_images, per_image, views, Coreset(0.1), np.random.default_rng(5),
                                      StageTimer(), False, np.ones(len(rows), dtype=bool))
    unmasked = TailCoreset(scope).select(rows, n_images, per_image, views, Coreset(0.1), np.random.default_rng(5),
                                         StageTimer(), False)
    np.testing.assert_array_equal(every, unmasked)
    assert len(picks) < len(every)


def test_tail_product_whose_images_no_rotation_brings_nearer_keeps_only_its_flipped_copies(tmp_path):
    train = _one_product_with_a_defect_and_another_products_image(tmp_path, views_per_image=3)
    two_tail = TailEstimate(np.full(30, 30), np.array([30]), 1, np.array([0, 1]))
    train = dataclasses.replace(train, tail=two_tail)  # views: copies of their image, as a texture's
    rule = policies.Views(step_degrees=180.0, rotations="evidence")  # views: flipped, turned, turned and flipped
    always = policies.TailedCorePolicy(views=policies.Views(step_degrees=180.0), unlike_tail=False)
    evidence = policies.TailedCorePolicy(views=rule, unlike_tail=False)
    every_view = always.build(train, np.random.default_rng(0)).memory.info
    flipped_only = evidence.build(train, np.random.default_rng(0)).memory.info
    assert every_view["tail_images_without_rotations"] == 0 and flipped_only["tail_images_without_rotations"] == 2
    assert every_view["tail_memory"] == int(0.1 * 2 * 16 * 4) and flipped_only["tail_memory"] == int(0.1 * 2 * 16 * 2)
