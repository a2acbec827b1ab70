"""Datasets in the MVTec AD folder layout, with clear errors on bad input.

Layout (MVTec AD, Magnetic Tile Defects, BTAD, KolektorSDD converted, or your own)::

    <root>/<category>/train/good/*.png|jpg|...
    <root>/<category>/test/good/*
    <root>/<category>/test/<defect>/*
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png, as BTAD names it)

Images are returned as float tensors in [0, 1], shape ``[3, S, S]``: RGB (grayscale replicated,
because ImageNet backbones want 3 channels) and squashed to ``S x S`` (aspect ratio not kept,
as in the papers). Masks are binarised at > 127 (MTD masks have soft edges) and resized with
nearest neighbour, shape ``[S, S]`` bool.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
MAX_IMAGE_PIXELS = 64_000_000  # refuse absurd inputs (decompression bombs) with a clear error


class DataWarning(UserWarning):
    """Data that is used, but not as the user may think (an image left out of pixel metrics)."""


class DataError(ValueError):
    """Bad input data. The message names the path and what is wrong with it."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Sample:
    """One image of a category.

    ``label`` is 0 for defect-free, 1 for defective. ``mask_path`` is None for good images and
    for defect images that have no mask file.
    """

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None

    @property
    def name(self) -> str:
        """Short unique id inside a split, e.g. ``crack/exp1_num_4.jpg``."""
        return f"{self.defect_type}/{self.path.name}"


@dataclass
class Category:
    """A category of a dataset: its training (defect-free) and test samples."""

    root: Path
    name: str
    train: list[Sample]
    test: list[Sample]
    has_masks: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect_type for s in self.test if s.label == 1})

    def fingerprint(self) -> str:
        """16 hex digits identifying the category's files: names and sizes of every training
        and test image and mask (not their bytes, so it is quick on large sets). Runs store it
        so that results on the embedded sample and on the full data are never mixed."""
        import hashlib

        digest = hashlib.sha256()
        for split, samples in (("train", self.train), ("test", self.test)):
            for s in sorted(samples, key=lambda s: s.name):
                mask = f" {s.mask_path.name} {s.mask_path.stat().st_size}" if s.mask_path else ""
                digest.update(f"{split}/{s.name} {s.path.stat().st_size}{mask}\n".encode())
        return digest.hexdigest()[:16]

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for s in self.test:
            counts[s.defect_type] = counts.get(s.defect_type, 0) + 1
        return {"category": self.name, "n_train": len(self.train), "n_test": len(self.test),
                "test_counts": counts, "has_masks": self.has_masks}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_categories(root: Path | str) -> list[str]:
    """Category folders under ``root`` (those that have ``train/good``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data root does not exist or is not a folder")
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())


def _find_mask(gt_dir: Path, image: Path) -> Path | None:
    for stem in (f"{image.stem}_mask", image.stem):
        for suffix in (".png", ".bmp", ".jpg", ".tif", ".tiff"):
            candidate = gt_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def check_category_name(root: Path | str, category: str) -> str:
    """``category`` if it is one plain folder name; DataError otherwise.

    A name such as ``../../x`` or ``/etc`` would read data outside the data root, and the
    default run folder is named after it, so it would write outside the runs root too."""
    name = category if isinstance(category, str) else ""
    if (not name.strip() or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or Path(name).is_absolute() or name != name.strip()):
        raise DataError(Path(root), f"invalid category name {category!r}: it must be one "
                                    "folder name inside the data root (no '/', '\\' or '..')")
    return name


def dataset_fingerprint(root: Path | str, category: str) -> str:
    """:meth:`Category.fingerprint` of ``root/category``."""
    return find_category(root, category).fingerprint()


def find_category(root: Path | str, category: str) -> Category:
    """Index a category folder. Raises DataError naming the path when the layout is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data root does not exist or is not a folder")
    folder = root / check_category_name(root, category)
    if not folder.is_dir():
        available = ", ".join(list_categories(root)) or "none"
        raise DataError(folder, f"unknown category '{category}' (available: {available})")
    train_dir = folder / "train" / "good"
    if not train_dir.is_dir():
        raise DataError(train_dir, "missing training folder train/good")
    train = [Sample(p, 0, "good") for p in _image_files(train_dir)]
    if not train:
        raise DataError(train_dir, "empty training set: no image files (.png/.jpg/...)")
    test_dir = folder / "test"
    if not test_dir.is_dir():
        raise DataError(test_dir, "missing test folder")
    gt_root = folder / "ground_truth"
    has_masks = gt_root.is_dir()
    test: list[Sample] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for image in _image_files(defect_dir):
            if defect == "good":
                test.append(Sample(image, 0, "good"))
                continue
            mask = _find_mask(gt_root / defect, image) if has_masks else None
            test.append(Sample(image, 1, defect, mask))
    if not test:
        raise DataError(test_dir, "test folder holds no images")
    return Category(root, category, train, test, has_masks)


_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # "I": 32-bit ints, 16-bit PNGs on old PIL


def rgb8(img: Image.Image) -> np.ndarray:
    """Any PIL image -> RGB ``[H, W, 3]`` uint8.

    16-bit images (mode ``I;16``, e.g. 16-bit PNG or TIFF, common from industrial cameras)
    are scaled from 0..65535 to 0..255: PIL's own ``convert("RGB")`` clips them, so nearly
    every pixel became white. Float images (mode ``F``) are read as 0..1 when they fit in it,
    else as 0..255.
    """
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if img.mode in _SIXTEEN_BIT:
            values = np.clip(values, 0, 65535) / 257.0
        elif values.size and values.max() <= 1.0:
            values = values * 255.0
        gray = np.round(np.clip(values, 0, 255)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def read_image(path: Path | str, size: int) -> np.ndarray:
    """Read an image as uint8 RGB ``[S, S, 3]``. DataError on unreadable or truncated files."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise DataError(path, f"image too large ({img.width}x{img.height} pixels)")
            img.load()  # decode now, so truncated files fail here and not deep inside torch
            rgb = Image.fromarray(rgb8(img)).resize((size, size), Image.BILINEAR)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(path, f"unreadable or truncated image ({err})") from None
    return np.array(rgb, dtype=np.uint8)  # a writable copy, as torch wants


def read_full_mask(sample: Sample) -> np.ndarray:
    """The mask of a defect sample at its image's own size, ``[H, W]`` bool.

    A pixel is a defect where any channel is > 127: grayscale masks binarise as usual, and a
    coloured annotation (red on black) is read as drawn instead of falling below the cut once
    converted to gray. DataError when the file is unreadable or its size differs from the
    image's.
    """
    path = sample.mask_path
    try:
        with Image.open(path) as m:
            m.load()
            mask = rgb8(m).max(axis=2)
    except FileNotFoundError:
        raise DataError(path, "mask file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(path, f"unreadable or truncated mask ({err})") from None
    try:
        with Image.open(sample.path) as img:
            image_size = img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(sample.path, f"unreadable or truncated image ({err})") from None
    if (mask.shape[1], mask.shape[0]) != image_size:
        raise DataError(path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                              f"{sample.path.name} is {image_size[0]}x{image_size[1]}")
    return mask > 127


def read_mask(sample: Sample, size: int) -> np.ndarray:
    """Binary mask ``[S, S]`` bool for a sample (all False for good images or no mask)."""
    if sample.mask_path is None:
        return np.zeros((size, size), dtype=bool)
    binary = Image.fromarray(read_full_mask(sample).astype(np.uint8) * 255)
    return np.asarray(binary.resize((size, size), Image.NEAREST)) > 0


def check_masks(category: Category, progress: bool = False) -> list[str]:
    """Read every mask of a category once, before any fitting; return what pixel metrics leave out.

    Raises DataError on a mask that cannot be used at all (unreadable, or a size that differs
    from its image's), so that the error comes before the fit and not after it. Returns one
    line per defect image left out of the pixel metrics (no mask file, or a mask with no
    pixel above the cut), naming the files.
    """
    notes = []
    for sample in tqdm(category.test, desc="checking masks", disable=not progress, leave=False):
        if sample.label == 0 or not category.has_masks:
            continue
        if sample.mask_path is None:
            notes.append(f"{sample.path}: no mask file in {category.root / category.name / 'ground_truth'}"
                         f"/{sample.defect_type}/, left out of pixel metrics")
        elif not read_full_mask(sample).any():
            notes.append(f"{sample.mask_path}: no pixel above 127 (an empty or faint mask), "
                         f"{sample.path.name} left out of pixel metrics")
    return notes


class ImageSet(Dataset):
    """Images of a list of samples at ``image_size``; item ``i`` is a float tensor ``[3, S, S]``.

    ``tensor()`` decodes every image once (with a progress bar) and keeps them as uint8,
    which is what methods use for feature caching.
    """

    def __init__(self, samples: list[Sample], image_size: int):
        self.samples = list(samples)
        self.image_size = int(image_size)
        self._uint8: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._uint8 is not None:
            return self._uint8[index].float() / 255.0
        return to_tensor(read_image(self.samples[index].path, self.image_size))

    def tensor(self, progress: bool = False, desc: str = "loading images") -> torch.Tensor:
        """All images as uint8 ``[N, 3, S, S]`` (decoded once, then cached)."""
        if self._uint8 is None:
            arrays = [read_image(s.path, self.image_size)
                      for s in tqdm(self.samples, desc=desc, disable=not progress, leave=False)]
            stacked = np.stack(arrays) if arrays else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
            self._uint8 = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
        return self._uint8

    def batches(self, batch_size: int, progress: bool = False, desc: str = "images"):
        """Yield float batches ``[B, 3, S, S]`` in [0, 1], in order."""
        images = self.tensor(progress=False)
        for start in tqdm(range(0, len(self), batch_size), desc=desc, disable=not progress, leave=False):
            yield images[start:start + batch_size].float() / 255.0

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """``(masks [N, S, S] bool, include [N] bool)``.

        ``include`` is False for defect images without a mask or with an empty mask: they count
        for image-level metrics and are left out of pixel-level ones.
        """
        masks = np.stack([read_mask(s, self.image_size) for s in self.samples])
        include = np.array([s.label == 0 or (s.mask_path is not None and masks[i].any())
                            for i, s in enumerate(self.samples)])
        return masks, include

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def to_tensor(image_uint8: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image_uint8)).permute(2, 0, 1).float() / 255.0


def split_train_val(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out a seeded fraction of the defect-free training images as normal validation data.

    The validation images choose the decision threshold and the display normalisation of
    anomaly maps, so neither ever looks at the test split.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(len(samples) * val_fraction))
    if n_val == 0:
        return list(samples), []
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    fit = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    if not fit:
        raise DataError(samples[0].path.parent, "no training images left after the validation split")
    return fit, val


def subsample(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """A seeded random subset of ``n`` samples (the training-set-size experiments)."""
    if n >= len(samples):
        return list(samples)
    chosen = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in chosen]
