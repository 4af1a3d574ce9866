import torch

from tailedcore.views import augmented_views, rotate_flip, view_transforms


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
