import numpy as np
import pytest
import torch

from tailedcore.blocks import Views
from tailedcore.views import augmented_views, rotate_flip, rotation_evidence, view_transforms


def test_47_views():
    transforms = view_transforms()
    assert len(transforms) == 47 and (0.0, False) not in transforms
    assert len(view_transforms(90, flip=False)) == 3
    assert augmented_views(torch.rand(3, 16, 16), transforms).shape == (47, 3, 16, 16)


def test_quarter_turns_and_flip_are_exact():
    image = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(rotate_flip(image, 90, False), torch.rot90(image, 1, (-2, -1)))
    torch.testing.assert_close(rotate_flip(image, 180, False), torch.rot90(image, 2, (-2, -1)))
    torch.testing.assert_close(rotate_flip(image, 0, True), image.flip(-1))


def test_no_black_corners():
    image = torch.full((1, 3, 32, 32), 5.0)
    rotated = rotate_flip(image, 45, True)
    torch.testing.assert_close(rotated, image)  # border replication: a constant image stays constant



def _texture_and_turned_part(transforms, dim=6):
    """Mean features of two products of two images each and of their views: a texture (every view as its
    image) and a part photographed turned (every rotated view of one image is the other image)."""
    rng = np.random.default_rng(3)
    texture, part = rng.standard_normal((2, dim)), rng.standard_normal((2, dim))
    rotated = np.array([angle % 360 != 0 for angle, _ in transforms])
    texture_views = np.repeat(texture[:, None], len(transforms), axis=1)
    part_views = np.where(rotated[None, :, None], part[::-1, None], part[:, None])
    return np.concatenate([texture, part]), np.concatenate([texture_views, part_views])


def test_rotation_evidence_is_one_for_a_texture_and_zero_when_a_turn_makes_the_other_image():
    transforms = view_transforms(90.0)
    images, views = _texture_and_turned_part(transforms)
    assert rotation_evidence(images[:2], views[:2], transforms) == pytest.approx(1.0)
    assert rotation_evidence(images[2:], views[2:], transforms) == pytest.approx(0.0, abs=1e-9)
    twins = np.repeat(images[2:3], 2, axis=0)
    assert rotation_evidence(twins, np.repeat(views[2:3], 2, axis=0), transforms) == 1.0  # nothing to bring nearer
    with pytest.raises(ValueError, match="images: 1 given"):
        rotation_evidence(images[:1], views[:1], transforms)


def test_evidence_rule_drops_rotations_only_of_products_without_evidence():
    rule = Views(step_degrees=90.0, rotations="evidence")
    images, views = _texture_and_turned_part(rule.transforms())
    images, views = np.concatenate([images, images[:1]]), np.concatenate([views, views[:1]])
    products = np.array([0, 0, 1, 1, 2])  # product 2: one image, no evidence either way
    evidence = rule.evidence(products, images, views)
    assert evidence == pytest.approx({0: 1.0, 1: 0.0}, abs=1e-9)
    kept = rule.kept(products, evidence)
    unrotated = [angle % 360 == 0 for angle, _ in rule.transforms()]
    assert kept[:2].tolist() == [unrotated, unrotated] and sum(unrotated) == 1  # the flipped copy
    assert kept[2:].all()
    assert Views(step_degrees=90.0).kept(products, evidence).all()  # "always": the paper
