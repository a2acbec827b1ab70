"""kit.synthetic: seeded synthetic defects (shapes in original pixels, object mask, sources, soft label)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from kit.data import DataError
from kit.synthetic import (DefectGenerator, SyntheticConfig, SyntheticWarning, category_is_texture,
                           foreground_mask, original_size, perlin_noise)

S = 64


def _texture_image(seed: int, size: int = S) -> torch.Tensor:
    """A smooth random colour texture [3, size, size] in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((size, size, 3)), sigma=(3, 3, 0))
    x = (x - x.min()) / (x.max() - x.min())
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))


def _disc_image(size: int = S, radius: float = 0.3) -> tuple[torch.Tensor, np.ndarray]:
    """A bright (lightly textured) disc on black: an 'object' category. Returns image and disc."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = np.hypot(yy - size / 2, xx - size / 2) <= radius * size
    rng = np.random.default_rng(1)
    value = np.where(disc, 0.7 + 0.2 * rng.random((size, size)), 0.0)
    return torch.from_numpy(np.repeat(value[None], 3, 0).astype(np.float32)), disc


def _write_images(folder: Path, n: int, size: int = 40, suffix: str = ".png", seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}{suffix}"
        Image.fromarray((rng.random((size, size + 7, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def dtd(tmp_path) -> Path:
    root = tmp_path / "dtd" / "images"
    _write_images(root / "banded", 3, suffix=".jpg", seed=1)
    _write_images(root / "bubbly", 2, suffix=".jpg", seed=2)
    return root


@pytest.fixture
def normals(tmp_path) -> list[Path]:
    return _write_images(tmp_path / "data" / "widget" / "train" / "good", 4, seed=3)


def _generator(normals, dtd, size=S, **cfg) -> DefectGenerator:
    cfg.setdefault("foreground", "off")
    return DefectGenerator(normals, size, seed=7, config=SyntheticConfig(**cfg), dtd_root=dtd)


def test_same_seed_and_key_give_the_same_defect_in_any_order(normals, dtd):
    image = _texture_image(0)
    keys = [3, 11, 5, 0, 42]
    a = _generator(normals, dtd)
    b = _generator(normals, dtd)
    first = {k: a(image, k, soft_label=True) for k in keys}
    second = {k: b(image, k, soft_label=True) for k in reversed(keys)}
    for k in keys:
        assert torch.equal(first[k].image, second[k].image)
        assert torch.equal(first[k].mask, second[k].mask)
        assert torch.equal(first[k].soft_label, second[k].soft_label)
        assert (first[k].shape, first[k].source) == (second[k].shape, second[k].source)
    again = a(image, 3)
    assert torch.equal(again.image, first[3].image)
    # other keys give other defects (image or mask differ), and so does another seed
    distinct = {(first[k].image.numpy().tobytes(), first[k].mask.numpy().tobytes()) for k in keys}
    assert len(distinct) == len(keys)
    other_seed = DefectGenerator(normals, S, seed=8, config=a.config, dtd_root=dtd)(image, 3)
    assert not torch.equal(other_seed.image, first[3].image)


@pytest.mark.parametrize("shape", ["perlin", "blob", "line", "scratch"])
def test_masks_are_binary_non_empty_and_the_image_changes_only_inside(normals, dtd, shape):
    gen = _generator(normals, dtd, shapes=(shape,), attempts=10)
    image = _texture_image(1)
    for key in range(6):
        d = gen(image, key, original_size=(90, 120))
        assert d.shape == shape and d.has_defect
        assert d.image.shape == (3, S, S) and d.mask.shape == (S, S)
        assert d.image.dtype == torch.float32 and d.mask.dtype == torch.float32
        assert 0.0 <= float(d.image.min()) and float(d.image.max()) <= 1.0
        assert set(np.unique(d.mask.numpy())) <= {0.0, 1.0}
        assert d.mask.sum() > 0
        assert d.soft_label is None  # not asked for
        changed = (d.image - image).abs().amax(0).numpy() > 0
        grown = ndimage.binary_dilation(d.mask.numpy() > 0, iterations=1)
        assert not (changed & ~grown).any(), "pixels changed outside the (dilated) mask"
        assert changed.any()


def _mean_area(size: int, original: tuple[int, int], shape: str, **cfg) -> float:
    gen = DefectGenerator([], size, seed=0, texture=True,
                          config=SyntheticConfig(shapes=(shape,), sources=("self",), **cfg))
    image = _texture_image(2, size)
    return float(np.mean([gen(image, k, original_size=original).mask.mean().item() for k in range(12)]))


def test_shape_sizes_are_pixels_of_the_original_image_not_fractions_of_s():
    blob = dict(blob_diameter_px=(40.0, 40.0))
    # the same 40-px blob in a 512-px original is half as wide, a quarter of the area fraction,
    # as in a 256-px original. Sizes given as fractions of S would give a ratio of 1.
    small_original = _mean_area(128, (256, 256), "blob", **blob)
    large_original = _mean_area(128, (512, 512), "blob", **blob)
    assert 3.0 < small_original / large_original < 5.0
    # ... and the area FRACTION does not depend on the input size S for one original size
    at_64, at_128 = _mean_area(64, (256, 256), "blob", **blob), _mean_area(128, (256, 256), "blob", **blob)
    assert abs(at_64 / at_128 - 1) < 0.25
    # the expected area: pi * 20^2 px of a 256^2 original, within the blob's irregularity
    assert 0.6 < small_original / (math.pi * 20 ** 2 / 256 ** 2) < 1.4
    # a non-square original squashes the shape: a blob in a 128 x 512 original covers 4x the
    # rows-fraction of the columns-fraction
    gen = DefectGenerator([], 128, seed=0, texture=True,
                          config=SyntheticConfig(shapes=("blob",), sources=("self",),
                                                 blob_diameter_px=(40.0, 40.0)))
    rows, cols = [], []
    for k in range(8):
        m = gen(_texture_image(2, 128), k, original_size=(128, 512)).mask.numpy() > 0
        ys, xs = np.nonzero(m)
        rows.append(np.ptp(ys) + 1), cols.append(np.ptp(xs) + 1)
    assert 2.5 < np.mean(rows) / np.mean(cols) < 5.5
    # a line of fixed width: about twice as many pixels (of S) in a half-size original
    line = dict(line_length_px=(60.0, 60.0), line_width_px=(6.0, 6.0))
    assert 1.5 < _mean_area(128, (256, 256), "line", **line) / _mean_area(128, (512, 512), "line", **line) < 6.0


def test_tiny_defects_keep_at_least_one_pixel_at_small_s():
    gen = DefectGenerator([], 32, seed=0, texture=True,
                          config=SyntheticConfig(shapes=("blob", "scratch"), sources=("self",),
                                                 blob_diameter_px=(3.0, 3.0), scratch_width_px=(1.0, 1.0)))
    for k in range(10):
        d = gen(_texture_image(3, 32), k, original_size=(600, 600))
        assert d.mask.sum() >= 1


def test_object_foreground_restricts_the_defect(normals, dtd):
    image, disc = _disc_image()
    fg = foreground_mask(image.permute(1, 2, 0).numpy())
    # Otsu + morphology finds the disc, not the black background (the polarity is automatic)
    assert (fg & disc).sum() / (fg | disc).sum() > 0.9
    grown_disc = ndimage.binary_dilation(disc, iterations=2)
    gen = DefectGenerator(normals, S, seed=1, config=SyntheticConfig(foreground="auto", attempts=10),
                          dtd_root=dtd, texture=False)
    assert gen.uses_foreground
    for k in range(12):
        d = gen(image, k)
        m = d.mask.numpy() > 0
        assert d.has_defect and m.any()
        assert not (m & ~grown_disc).any(), f"key {k}: a {d.shape} defect outside the object"
        assert not ((d.image - image).abs().amax(0).numpy() > 0)[~grown_disc].any()
    # off (textures): Perlin defects reach the background too
    off = DefectGenerator(normals, S, seed=1, config=SyntheticConfig(shapes=("perlin",), attempts=10),
                          dtd_root=dtd, texture=True)
    assert not off.uses_foreground
    assert any(((off(image, k).mask.numpy() > 0) & ~grown_disc).any() for k in range(12))


def test_texture_is_read_from_the_category_folder(tmp_path):
    tile = _write_images(tmp_path / "mtd" / "magnetic_tile" / "train" / "good", 1)
    bottle = _write_images(tmp_path / "mvtec" / "bottle" / "train" / "good", 1)
    assert DefectGenerator(tile, S, 0).texture and not DefectGenerator(tile, S, 0).uses_foreground
    assert not DefectGenerator(bottle, S, 0).texture and DefectGenerator(bottle, S, 0).uses_foreground
    assert category_is_texture("magnetic_tile") and category_is_texture("Carpet")
    assert all(category_is_texture(c) for c in ("grid", "leather", "tile", "wood"))
    assert not any(category_is_texture(c) for c in ("bottle", "screw", "transistor", "widget"))


def test_a_defect_only_on_the_background_makes_the_sample_normal(normals, dtd):
    image, disc = _disc_image(radius=0.12)
    gen = DefectGenerator(normals, S, seed=2, dtd_root=dtd, texture=False,
                          config=SyntheticConfig(shapes=("perlin",), attempts=1))
    normal = None
    for k in range(60):
        d = gen(image, k, soft_label=True)
        if not d.has_defect:
            normal = d
            break
    assert normal is not None, "no Perlin draw fell off the small object in 60 keys"
    assert torch.equal(normal.image, image)
    assert normal.mask.sum() == 0 and normal.soft_label.sum() == 0
    # with redraws the same generator returns a real defect for that key
    retry = DefectGenerator(normals, S, seed=2, dtd_root=dtd, texture=False,
                            config=SyntheticConfig(shapes=("perlin",), attempts=20))
    assert retry(image, k).has_defect


def test_soft_label_is_the_codes_sigmoid_of_the_blended_difference(normals, dtd):
    gen = _generator(normals, dtd, attempts=10)
    image = _texture_image(4)
    for key in range(8):
        d = gen(image, key, soft_label=True)
        soft, mask = d.soft_label.numpy(), d.mask.numpy() > 0
        assert soft.shape == (S, S) and 0.0 <= soft.min() and soft.max() <= 1.0
        assert (soft[~mask] == 0).all()
        diff = (d.image - image).mean(0).numpy()[mask]
        expected = np.mean(1 / (1 + np.exp(-5 * diff[diff != 0])))
        np.testing.assert_allclose(soft[mask], expected, rtol=1e-5)  # one value per defect
        assert 0.0 <= d.beta < 0.8 and len(d.augmentations) == 3


def test_without_dtd_it_warns_once_and_never_returns_dtd(normals, tmp_path):
    missing = tmp_path / "no-dtd-here"
    gen = DefectGenerator(normals, S, seed=0, dtd_root=missing, config=SyntheticConfig(foreground="off"))
    with pytest.warns(SyntheticWarning, match=r"'dtd'.*no-dtd-here"):
        first = gen(_texture_image(5), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SyntheticWarning)  # once: no second warning
        sources = {gen(_texture_image(5), k).source for k in range(1, 30)}
        DefectGenerator(normals, S, seed=1, dtd_root=missing, config=SyntheticConfig(foreground="off"))(
            _texture_image(5), 0)
    assert "dtd" not in sources | {first.source}
    assert sources | {first.source} == {"other", "self"}
    # DTD as the only source: a clear error instead of another kind of defect
    only = DefectGenerator(normals, S, seed=0, dtd_root=missing, config=SyntheticConfig(sources=("dtd",)))
    with pytest.raises(ValueError, match="none of the sources"), pytest.warns(SyntheticWarning):
        only(_texture_image(5), 0)


def test_an_unreadable_source_file_is_named(normals, tmp_path):
    root = tmp_path / "dtd" / "images" / "cracked"
    root.mkdir(parents=True)
    (root / "broken_0001.jpg").write_bytes(b"not a jpeg at all")
    gen = DefectGenerator(normals, S, seed=0, dtd_root=root.parent,
                          config=SyntheticConfig(sources=("dtd",), foreground="off"))
    with pytest.raises(DataError, match="broken_0001.jpg"):
        gen(_texture_image(6), 0)
    gone = tmp_path / "data" / "widget" / "train" / "good" / "vanished.png"
    other = DefectGenerator([gone], S, seed=0, config=SyntheticConfig(sources=("other",), foreground="off"))
    with pytest.raises(DataError, match="vanished.png"):
        other(_texture_image(6), 0)


def test_keep_gray_gives_a_gray_defect_on_a_gray_image(normals, dtd):
    gray = _texture_image(7)[:1].repeat(3, 1, 1)
    coloured = [_generator(normals, dtd, attempts=10)(gray, k).image for k in range(10)]
    assert any(not torch.equal(im[0], im[1]) for im in coloured)  # the code's default: colour gets in
    gen = _generator(normals, dtd, keep_gray=True, attempts=10)
    for k in range(10):
        im = gen(gray, k).image
        assert torch.equal(im[0], im[1]) and torch.equal(im[1], im[2])


def test_original_size_reads_the_header(normals, tmp_path):
    assert original_size(normals[0]) == (40, 47)  # (height, width)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="bad.png"):
        original_size(bad)


def test_bad_settings_and_inputs_are_refused(normals, dtd):
    for bad in (dict(shapes=("perlin", "star")), dict(sources=()), dict(foreground="maybe"),
                dict(beta_range=(0.5, 0.2)), dict(blob_diameter_px=(0.0, 3.0)), dict(n_augment=12),
                dict(shape_weights=(1.0,)), dict(attempts=0)):
        with pytest.raises(ValueError):
            SyntheticConfig(**bad)
    gen = _generator(normals, dtd)
    with pytest.raises(ValueError, match=r"\[3, 64, 64\]"):
        gen(torch.zeros(3, 32, 32), 0)
    with pytest.raises(ValueError, match="key"):
        gen(_texture_image(0), -1)


def test_perlin_noise_matches_the_papers_range():
    rng = np.random.default_rng(0)
    noise = perlin_noise(128, (4, 8), rng)
    assert noise.shape == (128, 128) and np.abs(noise).max() <= math.sqrt(2) * 0.75
    assert (noise > 0.5).mean() > 0.005  # the 0.5 threshold keeps blobs (sqrt(2) scaling)
    # rotated: corners rotate in from outside the image and read 0 (imgaug's zero fill)
    rotated = perlin_noise(128, (4, 8), np.random.default_rng(0), angle_deg=45.0)
    assert rotated[0, 0] == 0 and rotated[-1, -1] == 0


REAL = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "mtd" / "magnetic_tile").is_dir() or not (REAL / "dtd" / "images").is_dir(),
                    reason="needs ../shared/data/mtd and ../shared/data/dtd (the real data)")
def test_real_mtd_with_real_dtd():
    from kit.data import ImageSet, find_category
    cat = find_category(REAL / "mtd", "magnetic_tile")
    train = cat.train[:6]
    gen = DefectGenerator([s.path for s in cat.train], 128, seed=0, dtd_root=REAL / "dtd" / "images")
    assert gen.texture and not gen.uses_foreground  # MTD: a surface, no object mask
    seen = set()
    for key, (sample, image) in enumerate(zip(train * 4, list(ImageSet(train, 128)) * 4)):
        with Image.open(sample.path) as im:
            width, height = im.size
        d = gen(image, key, original_size=(height, width), soft_label=True)
        seen.add(d.source)
        if d.has_defect:
            assert d.mask.sum() > 0 and float(d.soft_label.max()) <= 1
    assert "dtd" in seen
