"""Dataset indexing, loading and the clear errors on bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from kit.data import DataError, ImageSet, find_category, list_categories, split_train_val, subsample
from tests.conftest import make_toy_dataset, write_png


def test_toy_layout_is_indexed(toy_root):
    cat = find_category(toy_root, "toy")
    assert len(cat.train) == 12 and len(cat.test) == 8
    assert cat.has_masks and cat.defect_types == ["crack"]
    assert sum(s.label for s in cat.test) == 4
    assert all(s.mask_path is not None for s in cat.test if s.label == 1)
    assert list_categories(toy_root) == ["toy"]


def test_images_are_rgb_float_and_resized(toy_root):
    cat = find_category(toy_root, "toy")
    images = ImageSet(cat.train, 32)
    x = images[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert torch.equal(x[0], x[1])  # grayscale replicated to 3 channels
    stacked = images.tensor()
    assert stacked.shape == (12, 3, 32, 32) and stacked.dtype == torch.uint8
    assert torch.allclose(images[0], x)  # cached path gives the same pixels


def test_masks_binarised_and_empty_masks_excluded(tmp_path):
    root = make_toy_dataset(tmp_path, n_defect=2, size=(48, 48))
    # a soft-edged mask (values 1..254) and an empty one, as in MTD
    soft = np.zeros((48, 48), np.uint8)
    soft[10:20, 10:20] = 255
    soft[9, 10:20] = 100  # <= 127: background after binarising
    write_png(tmp_path / "toy/ground_truth/crack/000_mask.png", soft)
    write_png(tmp_path / "toy/ground_truth/crack/001_mask.png", np.zeros((48, 48), np.uint8))
    cat = find_category(root, "toy")
    masks, include = ImageSet(cat.test, 48).masks()
    defect = [i for i, s in enumerate(cat.test) if s.label == 1]
    assert masks[defect[0]].sum() == 100  # 10x10, the soft row dropped
    assert not include[defect[1]]  # empty mask: out of pixel metrics
    assert include[[i for i, s in enumerate(cat.test) if s.label == 0]].all()


def test_category_without_masks(tmp_path):
    root = make_toy_dataset(tmp_path)
    shutil.rmtree(root / "toy/ground_truth")
    cat = find_category(root, "toy")
    assert not cat.has_masks
    assert all(s.mask_path is None for s in cat.test)


def test_missing_folder_unknown_category_and_empty_train(tmp_path, toy_root):
    with pytest.raises(DataError, match="does not exist"):
        find_category(tmp_path / "nowhere", "toy")
    with pytest.raises(DataError, match="unknown category 'bottle'.*available: toy"):
        find_category(toy_root, "bottle")
    for f in (toy_root / "toy/train/good").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="empty training set") as err:
        find_category(toy_root, "toy")
    assert "train/good" in str(err.value)


def test_corrupt_and_truncated_images_name_the_file(toy_root):
    bad = toy_root / "toy/train/good/005.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    cat = find_category(toy_root, "toy")
    with pytest.raises(DataError, match="005.png: unreadable or truncated image"):
        ImageSet(cat.train, 32).tensor()
    (toy_root / "toy/train/good/007.png").write_text("not an image at all")
    with pytest.raises(DataError, match="007.png"):
        ImageSet(cat.train, 32)[7]


def test_mask_of_wrong_size(toy_root):
    write_png(toy_root / "toy/ground_truth/crack/000_mask.png", np.zeros((10, 10), np.uint8))
    cat = find_category(toy_root, "toy")
    with pytest.raises(DataError, match=r"000_mask.png: mask is 10x10 but its image 000.png is 48x40"):
        ImageSet(cat.test, 32).masks()


def test_split_and_subsample_are_seeded(toy_root):
    cat = find_category(toy_root, "toy")
    fit_a, val_a = split_train_val(cat.train, 0.25, seed=3)
    fit_b, val_b = split_train_val(cat.train, 0.25, seed=3)
    assert [s.path for s in val_a] == [s.path for s in val_b] and len(val_a) == 3
    assert not {s.path for s in fit_a} & {s.path for s in val_a}
    _, val_c = split_train_val(cat.train, 0.25, seed=4)
    assert [s.path for s in val_c] != [s.path for s in val_a]
    assert len(subsample(cat.train, 5, seed=1)) == 5
    assert subsample(cat.train, 5, 1) == subsample(cat.train, 5, 1)


def test_embedded_sample_is_real_mtd(sample_root):
    cat = find_category(sample_root, "magnetic_tile")
    assert len(cat.train) == 100 and len(cat.test) == 65
    assert cat.defect_types == ["blowhole", "break", "crack", "fray", "uneven"]
    masks, include = ImageSet(cat.test, 64).masks()
    assert (~include).sum() == 1  # exp3_num_45042: labelled uneven, empty mask
    assert (sample_root / "SOURCE.txt").is_file()
    size = sum(f.stat().st_size for f in sample_root.rglob("*") if f.is_file())
    assert size < 10e6


def test_real_mtd_split(mtd_root):
    cat = find_category(mtd_root, "magnetic_tile")
    assert len(cat.train) == 761 and len(cat.test) == 583
    assert sum(s.label for s in cat.test) == 392
