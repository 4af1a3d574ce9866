"""Finding and loading images: MVTec-layout roots, plain folders, preprocessing.

Geometry follows PatchCore: resize the shorter side to ``resize`` pixels, then
center-crop ``crop`` x ``crop``. Masks go through the same geometry with
nearest-neighbour resampling, so a mask pixel stays on its image pixel.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GOOD = "good"


class DatasetError(ValueError):
    """A dataset folder does not have the expected layout."""


class ImageLoadError(ValueError):
    """An image file cannot be read as an image."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``label`` is 0 for normal and 1 for anomalous test images (``None`` when
    unknown); ``mask_path`` is the ground-truth mask, if the dataset has one.
    """

    path: Path
    class_name: str = ""
    label: int | None = None
    defect_type: str = ""
    mask_path: Path | None = None


@dataclass
class MVTecClass:
    """The train and test samples of one class of an MVTec-layout root."""

    name: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    has_masks: bool = False


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """All image files inside ``folder`` (and its sub-folders when ``recursive``), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    return sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if is_image_file(p))


def collect_images(inputs: list[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand files and folders into image paths: files in the given order, each folder's images
    (with its sub-folders' when ``recursive``) sorted by path, in place of the folder."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(list_images(item, recursive))
        elif item.is_file():
            paths.append(item)
        else:
            raise DatasetError(f"{item}: no such file or folder")
    return paths


def is_mvtec_root(root: str | os.PathLike) -> bool:
    """True if ``root`` has at least one ``<class>/train/good`` folder."""
    root = Path(root)
    return root.is_dir() and any((d / "train" / GOOD).is_dir() for d in root.iterdir() if d.is_dir())


def _mask_for(root: Path, defect_type: str, image: Path) -> Path | None:
    folder = root / "ground_truth" / defect_type
    for ext in (".png", image.suffix):
        candidate = folder / f"{image.stem}_mask{ext}"
        if candidate.is_file():
            return candidate
    return None


def load_mvtec_class(class_dir: str | os.PathLike, need_train: bool = True) -> MVTecClass:
    """Read one class folder: ``train/good``, ``test/<type>``, ``ground_truth/<type>``.

    Without ``need_train`` a missing ``train/good`` means no training images.
    Mask files that belong to no test image are reported (one warning line).
    """
    class_dir = Path(class_dir)
    train_dir = class_dir / "train" / GOOD
    if need_train and not train_dir.is_dir():
        raise DatasetError(f"{train_dir}: missing train/good folder")
    item = MVTecClass(name=class_dir.name)
    if train_dir.is_dir():
        item.train = [Sample(p, item.name, 0, GOOD) for p in list_images(train_dir)]
    test_dir = class_dir / "test"
    if test_dir.is_dir():
        for type_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
            label = 0 if type_dir.name == GOOD else 1
            for path in list_images(type_dir):
                mask = None if label == 0 else _mask_for(class_dir, type_dir.name, path)
                item.test.append(Sample(path, item.name, label, type_dir.name, mask))
    item.has_masks = any(s.mask_path is not None for s in item.test)
    truth = class_dir / "ground_truth"
    if truth.is_dir():
        used = {s.mask_path for s in item.test if s.mask_path is not None}
        orphans = sorted(p for p in truth.rglob("*") if is_image_file(p) and p not in used)
        if orphans:
            log.warning("%s: %d mask file(s) match no test image, e.g. %s", truth, len(orphans), orphans[0])
    return item


def load_mvtec(root: str | os.PathLike, need_train: bool = True) -> list[MVTecClass]:
    """All classes of an MVTec-layout root, sorted by name.

    Without ``need_train`` (test or validation roots) a class folder is one with ``test/`` or ``train/good``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if need_train:
        for folder in folders:
            if not (folder / "train" / GOOD).is_dir() and ((folder / "test").is_dir() or (folder / "train").is_dir()):
                raise DatasetError(f"{folder}: class folder without train/good")
    classes = [load_mvtec_class(d, need_train) for d in folders
               if (d / "train" / GOOD).is_dir() or (not need_train and (d / "test").is_dir())]
    if not classes:
        wanted = "<class>/train/good" if need_train else "<class>/test or <class>/train/good"
        raise DatasetError(f"{root}: no {wanted} folders (not an MVTec-layout root)")
    return classes


def training_images(data: str | os.PathLike) -> list[Path]:
    """The merged, unlabeled training set of ``data``.

    For an MVTec-layout root: every class's ``train/good`` images in one list
    (class names are not returned; the method never sees them). For a plain
    folder: its images.
    """
    if is_mvtec_root(data):
        classes = load_mvtec(data)
        for item in classes:
            if not item.train:
                log.warning("%s: no training images", Path(data) / item.name / "train" / GOOD)
        paths = [s.path for c in classes for s in c.train]
        if not paths:
            raise DatasetError(f"{data}: no training images in any <class>/train/good")
        return paths
    paths = list_images(data)
    if not paths:
        raise DatasetError(f"{data}: no images found")
    return paths


# Full scale of Pillow's high-bit-depth gray modes ("I" is how Pillow may hold a 16-bit file).
FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0, "F": 1.0}


def as_paths(images) -> list[Path]:
    """Training images: a dataset root or folder (str or path; training_images), or a list of files/folders."""
    if isinstance(images, (str, os.PathLike)):
        return training_images(images)
    return collect_images(list(images))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB with the EXIF orientation applied.

    16-bit gray is scaled by its bit depth (65535 -> 255) and float gray by 1.0, values outside
    clipped: never by the image's own content, so brightness is kept.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in FULL_SCALE:
        array = np.asarray(image, dtype=np.float64) * (255.0 / FULL_SCALE[image.mode])
        image = Image.fromarray(np.round(np.clip(array, 0, 255)).astype(np.uint8))
    return image.convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as 8-bit RGB (see ``to_rgb``).

    Truncated, corrupt, empty and non-image files, and images over Pillow's
    decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``), raise ImageLoadError.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        reason = str(error) or type(error).__name__
        raise ImageLoadError(f"{path}: cannot read image ({reason})") from error


# Upscaling beyond this factor invents the detail the backbone sees: such scores are unreliable.
MAX_UPSCALE = 4.0


def upscale_problem(size: tuple[int, int], resize: int) -> str | None:
    """Why an image of ``size`` (width, height) is too small for ``resize``, or None."""
    factor = resize / min(size)
    if factor <= MAX_UPSCALE:
        return None
    return (f"{size[0]}x{size[1]} image upscaled {factor:.1f}x to {resize} px (more than {MAX_UPSCALE:g}x): "
            "its score is unreliable")


def resize_and_crop(image: Image.Image, resize: int, crop: int, resample: int) -> Image.Image:
    """Resize the shorter side to ``resize``, then center-crop ``crop`` x ``crop``."""
    width, height = image.size
    scale = resize / min(width, height)
    new_size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    image = image.resize(new_size, resample)
    left = (new_size[0] - crop) // 2
    top = (new_size[1] - crop) // 2
    return image.crop((left, top, left + crop, top + crop))


def preprocess(image: Image.Image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """A decoded image -> (crop, crop, 3) uint8 RGB after resize and center crop."""
    return np.asarray(resize_and_crop(to_rgb(image), resize, crop, Image.BILINEAR))


def load_image(path: str | os.PathLike, resize: int = 256, crop: int = 224) -> np.ndarray:
    """An image file as (crop, crop, 3) uint8 RGB after resize and center crop."""
    return np.asarray(resize_and_crop(open_rgb(path), resize, crop, Image.BILINEAR))


def load_mask(path: str | os.PathLike | None, resize: int = 256, crop: int = 224,
              image_size: tuple[int, int] | None = None) -> np.ndarray:
    """A ground-truth mask as (crop, crop) bool; all False when ``path`` is None.

    Any nonzero-vs-zero labelling works (0/255, 0/1, gray): a pixel is a defect
    above half the largest value of the whole mask. EXIF orientation is applied
    as for images. ``image_size`` (width, height) of the image: a mask of
    another size but the same aspect ratio is first resized to it; another
    aspect ratio is refused (DatasetError).
    """
    if path is None:
        return np.zeros((crop, crop), dtype=bool)
    try:
        with Image.open(path) as mask:
            mask = ImageOps.exif_transpose(mask).convert("L")
            top = int(np.asarray(mask).max())
            mask = mask.point(lambda value: 255 if top and value > top / 2 else 0)
            if image_size is not None and mask.size != tuple(image_size):
                mask_aspect, image_aspect = mask.size[0] / mask.size[1], image_size[0] / image_size[1]
                if abs(mask_aspect - image_aspect) > 0.01 * image_aspect:
                    raise DatasetError(f"{path}: mask is {mask.size[0]}x{mask.size[1]} but its image is "
                                       f"{image_size[0]}x{image_size[1]} (another aspect ratio)")
                mask = mask.resize(tuple(image_size), Image.NEAREST)
            values = np.asarray(resize_and_crop(mask, resize, crop, Image.NEAREST))
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise ImageLoadError(f"{path}: cannot read mask ({error})") from error
    return values > 0


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as displayed (EXIF orientation applied), from its header."""
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(0x0112, 1)
            return (image.height, image.width) if orientation in (5, 6, 7, 8) else image.size
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{path}: cannot read image ({error})") from error
