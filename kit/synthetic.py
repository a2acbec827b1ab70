"""Synthetic defects on normal images: one seeded generator for every method that needs them.

CLS-CNFs (Oh and Kim 2024) trains its pixelwise classifier on them, NDP-Net (Luo, Yao, Yu 2023)
its defect-perception encoder, and ``scripts/differnet_dev.py`` uses them to choose DifferNet's
settings without touching the test split. The recipe is the one of CLS-CNFs' paper and public
code (itself MemSeg / DRAEM):

1. a **shape**: a thresholded, rotated Perlin-noise mask (the papers), or a blob, a straight line
   or a thin curved scratch (the kit's additions, sized in pixels of the *original* image so a
   3-px blowhole stays a 3-px blowhole whatever the input size ``S``);
2. restricted to the **object foreground** (Otsu plus morphology) for object categories, so no
   defect floats on the background; off for textures;
3. filled from a **source**: a DTD texture, another normal image of the category, or the image
   itself shifted (cut-paste), after 3 random photometric augmentations;
4. **blended**: inside the mask ``x_s = beta * x + (1 - beta) * source`` with
   ``beta ~ U[0, 0.8)``, outside it the image is untouched;
5. optionally a **soft label** (CLS-CNFs): one value for the whole defect, the mean over its
   pixels of ``sigmoid(5 * mean_RGB(x_s - x))``; a defect that ends up empty (only on the
   background) makes the sample normal again.

Every draw comes from ``numpy.random.default_rng([seed, key])``: the same ``(seed, key)`` gives the
same defect in any call order, on any machine, so training sets regenerated every few epochs are
reproducible. Shapes: images ``[3, S, S]`` float in [0, 1], masks ``[S, S]``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from tqdm.auto import tqdm

SHAPES = ("perlin", "blob", "line", "scratch")
SOURCES = ("dtd", "other", "self")
FOREGROUND_MODES = ("auto", "otsu", "off")

# MVTec AD's five texture categories, plus Magnetic Tile Defects (a surface: no background).
# CLS-CNFs' code also skips the object mask for 'transistor' and BTAD '02'; those stay objects
# here unless the caller passes texture=True.
TEXTURE_CATEGORIES = frozenset({"carpet", "grid", "leather", "tile", "wood", "magnetic_tile"})

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_FG_CACHE_SIZE = 4096  # object masks remembered per generator (packed bits: 32 MB at S = 256)
_WARNED: set[str] = set()  # messages already shown in this process ("warns once")


class SyntheticWarning(UserWarning):
    """A synthetic-defect source that was asked for is missing; the others are used."""


def category_is_texture(name: str) -> bool:
    """True for MVTec AD's texture categories and MTD (``magnetic_tile``): no object mask there."""
    return str(name).strip().lower() in TEXTURE_CATEGORIES


@dataclass
class SyntheticConfig:
    """What the generator draws from. "code" = CLS-CNFs' public code (custom_datasets/
    synthetic_data_loader.py, from DRAEM); "kit" = a choice of this kit, not in the papers."""

    shapes: tuple[str, ...] = SHAPES  # kit: the papers use Perlin only; blob/line/scratch added
    shape_weights: tuple[float, ...] | None = None  # kit: None = equal weights over `shapes`
    # code: DTD, or with probability 0.5 another normal image (their use_in_domain_data);
    # kit adds "self" (cut-paste from another place of the same image, CutPaste-style)
    sources: tuple[str, ...] = SOURCES
    source_weights: tuple[float, ...] | None = None  # None = equal: ("dtd","other") -> code's 0.5/0.5
    foreground: str = "auto"  # "auto" (otsu for objects, off for textures) | "otsu" | "off"; code: per class
    # -- Perlin shape (code values) --
    perlin_scale_exponents: tuple[int, int] = (0, 6)  # code: 2 ** randint(0, 6) periods per axis (1..32)
    perlin_rotation_deg: float = 90.0  # code: imgaug Affine(rotate=(-90, 90)), zero fill
    perlin_threshold: float = 0.5  # code: noise > 0.5 (noise scaled by sqrt(2), as DRAEM's)
    # -- pixel-sized shapes, in pixels of the ORIGINAL image (kit; from MTD's masks: blowholes
    #    6-33 px across, cracks 25-260 px long and 3-10 px wide, in images of 200-630 px) --
    blob_diameter_px: tuple[float, float] = (4.0, 40.0)  # log-uniform
    line_length_px: tuple[float, float] = (20.0, 200.0)  # log-uniform
    line_width_px: tuple[float, float] = (3.0, 10.0)  # uniform
    scratch_length_px: tuple[float, float] = (20.0, 250.0)  # log-uniform
    scratch_width_px: tuple[float, float] = (1.0, 4.0)  # uniform
    # -- content and blend (code values) --
    beta_range: tuple[float, float] = (0.0, 0.8)  # code: beta = rand() * 0.8, weight of the ORIGINAL in the mask
    n_augment: int = 3  # code: 3 distinct of 9 imgaug augmenters, applied to the source in turn
    self_shift: tuple[float, float] = (0.25, 0.75)  # kit: "self" source shift per axis, fraction of S
    keep_gray: bool = False  # code: off (colour DTD reaches grayscale images); on: gray source for gray images
    # -- object mask (code: 3x3 Gaussian blur, Otsu, 3x3 open + close, blur sigma 2, fill holes) --
    morph_size: int = 3  # code: 3x3 kernel at the input size
    fill_holes: bool = True  # code: True except for grid, metal_nut, BTAD 01
    # -- soft label and retries --
    soft_label_gain: float = 5.0  # code: sigmoid(5 * diff)
    attempts: int = 1  # code: one draw; an empty defect is a normal sample. >1: redraw until non-empty

    def __post_init__(self):
        self.shapes, self.sources = tuple(self.shapes), tuple(self.sources)
        for name, values, known in (("shapes", self.shapes, SHAPES), ("sources", self.sources, SOURCES)):
            bad = [v for v in values if v not in known]
            if not values or bad:
                raise ValueError(f"SyntheticConfig.{name}={values!r}: use a non-empty subset of {known}")
        for name, weights, values in (("shape_weights", self.shape_weights, self.shapes),
                                      ("source_weights", self.source_weights, self.sources)):
            if weights is not None and (len(weights) != len(values) or min(weights) < 0 or sum(weights) <= 0):
                raise ValueError(f"SyntheticConfig.{name}={weights!r}: one weight >= 0 per entry of "
                                 f"{values!r}, not all zero")
        if self.foreground not in FOREGROUND_MODES:
            raise ValueError(f"SyntheticConfig.foreground={self.foreground!r}: use one of {FOREGROUND_MODES}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_px", "_range", "_exponents", "_shift")):
                lo, hi = value
                if not (0 <= lo <= hi) or (f.name.endswith("_px") and lo <= 0):
                    raise ValueError(f"SyntheticConfig.{f.name}={value!r}: need 0 < low <= high")
        lo, hi = self.perlin_scale_exponents
        if not (isinstance(lo, int) and isinstance(hi, int) and hi > lo):
            raise ValueError(f"perlin_scale_exponents={self.perlin_scale_exponents!r}: integers, high > low "
                             "(half-open, as randint)")
        if self.beta_range[1] > 1 or not 0 <= self.n_augment <= len(_AUGMENTERS):
            raise ValueError(f"beta_range={self.beta_range!r} must lie in [0, 1], n_augment="
                             f"{self.n_augment} in 0..{len(_AUGMENTERS)}")
        if self.attempts < 1 or self.morph_size < 1:
            raise ValueError(f"attempts={self.attempts}, morph_size={self.morph_size}: both must be >= 1")


@dataclass
class SyntheticDefect:
    """One synthetic defect. ``has_defect`` is False when the drawn defect came out empty (only on
    the background, or a Perlin draw below its threshold): then the image is the input, the
    mask and the soft label are zeros, and the sample is a *normal* one (CLS-CNFs' code)."""

    image: torch.Tensor  # [3, S, S] float in [0, 1]
    mask: torch.Tensor  # [S, S] float {0, 1}
    soft_label: torch.Tensor | None  # [S, S] float in [0, 1], zero outside the mask; None unless asked
    shape: str  # what was drawn: one of SHAPES
    source: str  # one of SOURCES
    has_defect: bool = True
    beta: float = 0.0  # weight of the original image inside the mask
    augmentations: tuple[str, ...] = field(default_factory=tuple)  # applied to the source, in order


# ------------------------------------------------------------------------------------------------
# shapes

def _fade(t: np.ndarray) -> np.ndarray:
    # Perlin's quintic: zero first and second derivative at the lattice, so no grid artefacts
    return t * t * t * (t * (t * 6 - 15) + 10)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    yy.setflags(write=False), xx.setflags(write=False)
    return yy, xx


def perlin_noise(size: int, periods: tuple[int, int], rng: np.random.Generator,
                 angle_deg: float = 0.0) -> np.ndarray:
    """Gradient noise ``[size, size]`` with ``periods = (rows, cols)`` lattice cells across the image.

    Scaled by sqrt(2) as DRAEM's code does, so values reach about +-1 and a 0.5 threshold keeps
    blobs. The rotation is applied to the sampling coordinates (about the image centre), which
    equals rotating the noise image with exact interpolation; points rotated in from outside the
    image read 0, as imgaug's zero fill does.
    """
    py, px = int(periods[0]), int(periods[1])
    angles = rng.uniform(0.0, 2 * math.pi, size=(py + 1) * (px + 1))
    gy, gx = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)  # flat lattice
    yy, xx = _grid(size)
    c = (size - 1) / 2.0
    cos_a, sin_a = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    ys = c + (yy - c) * cos_a - (xx - c) * sin_a
    xs = c + (yy - c) * sin_a + (xx - c) * cos_a
    inside = (ys >= 0) & (ys <= size - 1) & (xs >= 0) & (xs <= size - 1)
    # lattice coordinates: pixel j sits at j / size * periods (the code samples pixel corners)
    v = np.clip(ys, 0, size - 1) * np.float32(py / size)
    u = np.clip(xs, 0, size - 1) * np.float32(px / size)
    y0, x0 = np.minimum(v.astype(np.int32), py - 1), np.minimum(u.astype(np.int32), px - 1)
    fy, fx = v - y0, u - x0
    corner = y0 * (px + 1) + x0  # flat index of the top-left lattice node of each pixel

    def ramp(dy, dx):  # dot product of a corner's gradient with the offset from that corner
        i = corner + (dy * (px + 1) + dx)
        return gy.take(i) * (fy - dy) + gx.take(i) * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    n00, n01, n10, n11 = ramp(0, 0), ramp(0, 1), ramp(1, 0), ramp(1, 1)
    top = n00 + tx * (n01 - n00)
    bottom = n10 + tx * (n11 - n10)
    noise = np.float32(math.sqrt(2)) * (top + ty * (bottom - top))
    return np.where(inside, noise, np.float32(0.0))


def _perlin_mask(size: int, rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    lo, hi = cfg.perlin_scale_exponents
    periods = (2 ** int(rng.integers(lo, hi)), 2 ** int(rng.integers(lo, hi)))
    angle = rng.uniform(-cfg.perlin_rotation_deg, cfg.perlin_rotation_deg)
    return perlin_noise(size, periods, rng, angle) > cfg.perlin_threshold


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    # sizes spanning 10x: log-uniform gives small and large defects equal weight
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


class _Canvas:
    """The ``S x S`` grid seen in pixels of the original ``H x W`` image (squashed, as kit.data does).

    Distances are measured in original pixels, so a shape of given pixel size covers
    ``size * S / H`` rows and ``size * S / W`` columns of the input. Every shape is at least one
    input pixel wide (half-width >= half an input pixel), so a thin scratch never vanishes or
    breaks up at small ``S``.
    """

    def __init__(self, size: int, original: tuple[int, int]):
        self.size = size
        self.py, self.px = original[0] / size, original[1] / size  # original px per input px
        self.min_half = 0.5 * max(self.py, self.px)
        self.mask = np.zeros((size, size), dtype=bool)

    def center(self, row: int, col: int) -> np.ndarray:
        """Centre of input pixel (row, col) in original pixels, as (y, x)."""
        return np.array([(row + 0.5) * self.py, (col + 0.5) * self.px])

    def _window(self, lo: np.ndarray, hi: np.ndarray):
        """Input-pixel window covering original-pixel box [lo, hi]; centres of its pixels."""
        r0, r1 = max(0, int(lo[0] / self.py)), min(self.size, int(hi[0] / self.py) + 1)
        c0, c1 = max(0, int(lo[1] / self.px)), min(self.size, int(hi[1] / self.px) + 1)
        if r0 >= r1 or c0 >= c1:
            return None
        ys = ((np.arange(r0, r1) + 0.5) * self.py)[:, None]
        xs = ((np.arange(c0, c1) + 0.5) * self.px)[None, :]
        return (slice(r0, r1), slice(c0, c1)), ys, xs

    def segment(self, a: np.ndarray, b: np.ndarray, half_width: float) -> None:
        """Mark pixels within ``half_width`` original px of segment a-b (both (y, x))."""
        h = max(half_width, self.min_half)
        win = self._window(np.minimum(a, b) - h, np.maximum(a, b) + h)
        if win is None:
            return
        sl, ys, xs = win
        d = b - a
        t = np.clip(((ys - a[0]) * d[0] + (xs - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0.0, 1.0)
        dist2 = (ys - a[0] - t * d[0]) ** 2 + (xs - a[1] - t * d[1]) ** 2
        self.mask[sl] |= dist2 <= h * h

    def blob(self, c: np.ndarray, radius: float, aspect: float, angle: float,
             harmonics: np.ndarray, phases: np.ndarray) -> None:
        """Irregular ellipse: radius(theta) = r * (1 + sum_k a_k cos(k theta + phi_k)), k = 2, 3, 4."""
        reach = max(radius * (1 + harmonics.sum()), self.min_half) + 1e-9
        win = self._window(c - reach, c + reach)
        if win is None:
            return
        sl, ys, xs = win
        dy, dx = ys - c[0], xs - c[1]
        u = dy * math.cos(angle) + dx * math.sin(angle)  # along the major axis
        w = (-dy * math.sin(angle) + dx * math.cos(angle)) / aspect  # minor axis stretched to a circle
        theta = np.arctan2(w, u)
        edge = radius * (1 + sum(a * np.cos(k * theta + p) for k, a, p in zip((2, 3, 4), harmonics, phases)))
        inside = np.hypot(u, w) <= np.maximum(edge, self.min_half)
        self.mask[sl] |= inside

    def mark_pixel(self, row: int, col: int) -> None:
        self.mask[row, col] = True


def _pixel_shape(kind: str, canvas: _Canvas, row: int, col: int, rng: np.random.Generator,
                 cfg: SyntheticConfig) -> None:
    """Draw a blob / line / scratch centred on input pixel (row, col); sizes in original px."""
    c = canvas.center(row, col)
    if kind == "blob":
        radius = _log_uniform(rng, cfg.blob_diameter_px) / 2
        aspect = rng.uniform(0.5, 1.0)
        angle = rng.uniform(0, math.pi)
        harmonics, phases = rng.uniform(0, 0.12, size=3), rng.uniform(0, 2 * math.pi, size=3)
        canvas.blob(c, radius, aspect, angle, harmonics, phases)
    elif kind == "line":
        length = _log_uniform(rng, cfg.line_length_px)
        half_width = rng.uniform(*cfg.line_width_px) / 2
        angle = rng.uniform(0, math.pi)
        d = 0.5 * length * np.array([math.sin(angle), math.cos(angle)])
        canvas.segment(c - d, c + d, half_width)
    else:  # scratch: a thin polyline whose heading drifts, centred on c
        length = _log_uniform(rng, cfg.scratch_length_px)
        half_width = rng.uniform(*cfg.scratch_width_px) / 2
        n = 8
        headings = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0.0, 0.35, size=n))
        steps = (length / n) * np.stack([np.sin(headings), np.cos(headings)], axis=1)
        points = np.vstack([np.zeros(2), np.cumsum(steps, axis=0)])
        points += c - points[n // 2]
        for a, b in zip(points[:-1], points[1:]):
            canvas.segment(a, b, half_width)
    canvas.mark_pixel(row, col)  # a defect smaller than one input pixel still occupies one


# ------------------------------------------------------------------------------------------------
# object foreground

def foreground_mask(image: np.ndarray, morph_size: int = 3, fill_holes: bool = True) -> np.ndarray:
    """Object mask ``[S, S]`` bool of an image ``[S, S, 3]`` float in [0, 1] (CLS-CNFs / MemSeg).

    Luma, 3x3 Gaussian blur, Otsu threshold, opening then closing with a ``morph_size`` square,
    a sigma-2 blur cut at one half (smooths the outline, as the code does), holes filled. Which
    Otsu class is the object: the code keeps a hand list of classes per polarity; here the
    object is the class that touches the image border less (the background surrounds it).
    A constant image has no object to find: everything is foreground.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    gray = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
    gray = ndimage.gaussian_filter(gray, sigma=0.8, truncate=1.25)  # ~ cv2.GaussianBlur((3, 3), 0)
    if float(gray.max() - gray.min()) < 1e-6:
        return np.ones(gray.shape, dtype=bool)
    bright = gray > threshold_otsu(gray)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    fg = ~bright if border.mean() > 0.5 else bright
    pad = morph_size + 6  # pad with edge values so closing does not eat into the border
    fg = np.pad(fg.view(np.uint8), pad, mode="edge")
    # opening then closing with a square: min/max filters are the same on a binary image, faster
    fg = ndimage.maximum_filter(ndimage.minimum_filter(fg, morph_size), morph_size)  # opening
    fg = ndimage.minimum_filter(ndimage.maximum_filter(fg, morph_size), morph_size)  # closing
    fg = ndimage.gaussian_filter(fg.astype(np.float32), sigma=2.0) > 0.5
    fg = fg[pad:-pad, pad:-pad]
    if fill_holes:  # a hole = a background component that does not touch the border
        labels, _ = ndimage.label(~fg)
        outside = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        fg = fg | ~np.isin(labels, outside[outside > 0])
    return fg


# ------------------------------------------------------------------------------------------------
# photometric augmentation of the source: the 9 imgaug augmenters of CLS-CNFs' code, with their
# default ranges, written on PIL / numpy. Each takes and returns uint8 [S, S, 3].

def _gamma(img, rng):  # GammaContrast((0.5, 2.0), per_channel=True)
    gamma = rng.uniform(0.5, 2.0, size=3)
    lut = np.round(255.0 * (np.arange(256)[:, None] / 255.0) ** gamma).astype(np.uint8)  # [256, 3]
    return np.stack([lut[img[..., ch], ch] for ch in range(3)], axis=-1)


def _brightness(img, rng):  # MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)), random order
    # imgaug picks one of six colour spaces at random for the brightness channel; this uses
    # YCbCr's luma (one of them)
    mul, add, add_first = rng.uniform(0.8, 1.2), rng.uniform(-30, 30), rng.random() < 0.5
    ycc = np.asarray(Image.fromarray(img).convert("YCbCr"), dtype=np.float64)
    y = ycc[..., 0]
    ycc[..., 0] = (y + add) * mul if add_first else y * mul + add
    return np.asarray(Image.fromarray(np.clip(np.round(ycc), 0, 255).astype(np.uint8), "YCbCr").convert("RGB"))


def _sharpness(img, rng):  # pillike.EnhanceSharpness(factor=(0.0, 2.0))
    return np.asarray(ImageEnhance.Sharpness(Image.fromarray(img)).enhance(rng.uniform(0.0, 2.0)))


def _hue_saturation(img, rng):  # AddToHueAndSaturation((-50, 50), per_channel=True)
    # per_channel: independent values for hue and saturation. imgaug maps a hue value v in
    # [-255, 255] to v / 255 * 360 degrees, which is exactly v on PIL's 0..255 hue scale
    dh, ds = rng.integers(-50, 51, size=2)
    hsv = np.asarray(Image.fromarray(img).convert("HSV"), dtype=np.int64).copy()
    hsv[..., 0] = (hsv[..., 0] + dh) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] + ds, 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


def _solarize(img, rng):  # Solarize(0.5, threshold=(32, 128)): p = 0.5, invert values >= threshold
    apply, threshold = rng.random() < 0.5, rng.uniform(32, 128)
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8) if apply else img


def _posterize(img, rng):  # Posterize(): keep nb_bits in 1..8 per channel value
    return np.asarray(ImageOps.posterize(Image.fromarray(img), int(rng.integers(1, 9))))


def _invert(img, rng):  # Invert()
    return (255 - img).astype(np.uint8)


def _autocontrast(img, rng):  # pillike.Autocontrast(cutoff=(0, 20))
    return np.asarray(ImageOps.autocontrast(Image.fromarray(img), cutoff=int(rng.integers(0, 21))))


def _equalize(img, rng):  # pillike.Equalize()
    return np.asarray(ImageOps.equalize(Image.fromarray(img)))


_AUGMENTERS = {"gamma": _gamma, "brightness": _brightness, "sharpness": _sharpness,
               "hue_saturation": _hue_saturation, "solarize": _solarize, "posterize": _posterize,
               "invert": _invert, "autocontrast": _autocontrast, "equalize": _equalize}


def augment_source(img: np.ndarray, rng: np.random.Generator, n: int = 3) -> tuple[np.ndarray, tuple[str, ...]]:
    """``n`` distinct augmenters drawn at random, applied in the drawn order (the code's
    ``iaa.Sequential`` of 3 of 9). uint8 ``[S, S, 3]`` in and out; returns their names too."""
    names = list(_AUGMENTERS)
    chosen = tuple(names[i] for i in rng.choice(len(names), size=n, replace=False))
    for name in chosen:
        img = np.ascontiguousarray(_AUGMENTERS[name](img, rng))
    return img, chosen


# ------------------------------------------------------------------------------------------------
# the generator

def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, SyntheticWarning, stacklevel=4)  # points at the generator's caller


def original_size(path: Path | str) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header, without decoding the pixels: the
    ``original_size`` to pass for an image that was squashed to ``S x S``. DataError names the file."""
    from kit.data import DataError
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(path, f"unreadable image ({err})") from None


def _read_rgb(path: Path, size: int) -> np.ndarray:
    """uint8 ``[S, S, 3]`` of an image file, squashed (as the code's cv2.resize); DataError names it."""
    from kit.data import read_image  # one reader for the whole kit: 16-bit, truncated files, ...
    return read_image(path, size)


class DefectGenerator:
    """Seeded synthetic defects for the normal images of one category.

    ``normals``: the category's normal training images (the "other" source). ``image_size``:
    ``S`` of the images passed in. ``texture``: no object mask (MVTec textures, MTD); None = from
    the category folder of ``normals`` (``<root>/<category>/train/good/``) by
    :func:`category_is_texture`. ``dtd_root``: DTD's ``images`` folder (default
    :func:`kit.paths.dtd_root`). Building it is cheap: files are listed on the first call.
    """

    def __init__(self, normals: list[Path], image_size: int, seed: int,
                 config: SyntheticConfig | None = None, dtd_root: Path | None = None,
                 texture: bool | None = None):
        self.normals = [Path(p) for p in normals]
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.config = config or SyntheticConfig()
        self._dtd_root = Path(dtd_root).expanduser() if dtd_root is not None else None
        if texture is None:
            texture = bool(self.normals) and len(self.normals[0].parents) > 2 and \
                category_is_texture(self.normals[0].parents[2].name)
        self.texture = bool(texture)
        self._dtd_files: list[Path] | None = None
        self._available: tuple[list[str], list[float]] | None = None
        self._fg_cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        if self.image_size < 2 or self.seed < 0:
            raise ValueError(f"image_size={image_size} must be >= 2 and seed={seed} >= 0")

    def with_config(self, config: SyntheticConfig) -> "DefectGenerator":
        """The same normals, size, seed, DTD folder and texture flag with another recipe
        (a method that needs the papers' Perlin-only defects, say)."""
        return DefectGenerator(self.normals, self.image_size, self.seed, config, self._dtd_root,
                               self.texture)

    @property
    def uses_foreground(self) -> bool:
        """Whether defects are restricted to the Otsu object mask."""
        mode = self.config.foreground
        return mode == "otsu" or (mode == "auto" and not self.texture)

    @property
    def dtd_root(self) -> Path | None:
        if self._dtd_root is not None:
            return self._dtd_root
        from kit.paths import dtd_root
        return dtd_root()

    def sources_available(self) -> list[str]:
        """The configured sources this generator can use (DTD found, normals given); warns once
        about each missing one, and raises when none is left."""
        return self._sources()[0]

    def _sources(self) -> tuple[list[str], list[float]]:
        if self._available is not None:
            return self._available
        cfg = self.config
        weights = cfg.source_weights or (1.0,) * len(cfg.sources)
        names, kept = [], []
        for name, w in zip(cfg.sources, weights):
            missing = None
            if name == "dtd":
                root = self.dtd_root
                if root is None:
                    missing = ("no DTD folder: set KIT_DTD_ROOT, pass dtd_root=, or place DTD's images/ "
                               "at ../shared/data/dtd/images")
                else:
                    self._dtd_files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES) \
                        if root.is_dir() else []
                    if not self._dtd_files:
                        missing = f"no DTD images in {root}"
            elif name == "other" and not self.normals:
                missing = "no normal images were given"
            if missing:
                others = [s for s in cfg.sources if s != name]
                _warn_once(f"synthetic defects: source {name!r} is unavailable ({missing}); "
                           f"using {others or 'nothing'} instead")
            elif w > 0:
                names.append(name)
                kept.append(float(w))
        if not names:
            raise ValueError(f"synthetic defects: none of the sources {cfg.sources!r} is available "
                             "(see the warnings above)")
        self._available = (names, kept)
        return self._available

    def _foreground(self, x8: np.ndarray) -> np.ndarray:
        """Object mask of an image, remembered by content: the same training image comes back
        every epoch, and its mask does not depend on the key."""
        digest = hashlib.blake2b(x8.tobytes(), digest_size=16).digest()
        packed = self._fg_cache.get(digest)
        if packed is None:
            fg = foreground_mask(x8.astype(np.float32) / 255.0, self.config.morph_size, self.config.fill_holes)
            self._fg_cache[digest] = np.packbits(fg)  # 1 bit per pixel: 8 KB at S = 256
            if len(self._fg_cache) > _FG_CACHE_SIZE:
                self._fg_cache.popitem(last=False)
            return fg
        self._fg_cache.move_to_end(digest)
        return np.unpackbits(packed, count=x8.shape[0] * x8.shape[1]).reshape(x8.shape[:2]).astype(bool)

    def _source_image(self, source: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 ``[S, S, 3]`` content for the defect, before augmentation."""
        s = self.image_size
        if source == "dtd":
            return _read_rgb(self._dtd_files[int(rng.integers(len(self._dtd_files)))], s)
        if source == "other":
            return _read_rgb(self.normals[int(rng.integers(len(self.normals)))], s)
        lo, hi = self.config.self_shift  # "self": the image shifted, so content comes from elsewhere
        shift = [int(round(rng.uniform(lo, hi) * s)) for _ in range(2)]
        return np.roll(image, shift, axis=(0, 1))

    def __call__(self, image: torch.Tensor, key: int, original_size: tuple[int, int] | None = None,
                 soft_label: bool = False) -> SyntheticDefect:
        """A synthetic defect on ``image [3, S, S]`` (float in [0, 1]), drawn from ``(seed, key)``.

        ``original_size = (height, width)`` of the image before it was squashed to ``S x S``:
        blob / line / scratch sizes are in its pixels (None = the image is its own original).
        ``soft_label``: also return CLS-CNFs' soft label.
        """
        s, cfg = self.image_size, self.config
        if tuple(image.shape) != (3, s, s):
            raise ValueError(f"image must be [3, {s}, {s}], got {list(image.shape)}")
        if int(key) < 0:
            raise ValueError(f"key={key} must be >= 0")
        original = tuple(int(v) for v in original_size) if original_size is not None else (s, s)
        if len(original) != 2 or min(original) < 1:
            raise ValueError(f"original_size={original_size!r}: (height, width) in pixels")
        # numpy from here on: torch's thread pool costs more than these small ops on a busy CPU
        x = np.clip(np.ascontiguousarray(image.detach().cpu().numpy().astype(np.float32, copy=False)
                                         .transpose(1, 2, 0)), 0, 1)  # [S, S, 3]
        x8 = np.round(x * 255).astype(np.uint8)
        rng = np.random.default_rng([self.seed, int(key)])
        sources, source_w = self._sources()
        shape_w = np.asarray(cfg.shape_weights or (1.0,) * len(cfg.shapes), dtype=np.float64)
        fg = self._foreground(x8) if self.uses_foreground else None
        fg_pixels = np.flatnonzero(fg) if fg is not None else None

        for _ in range(cfg.attempts):
            shape = cfg.shapes[int(rng.choice(len(cfg.shapes), p=shape_w / shape_w.sum()))]
            if shape == "perlin":
                mask = _perlin_mask(s, rng, cfg)
            else:
                # centre on the object when there is one, so the defect is not mostly cut away
                if fg_pixels is not None and len(fg_pixels):
                    row, col = divmod(int(fg_pixels[rng.integers(len(fg_pixels))]), s)
                else:
                    row, col = int(rng.integers(s)), int(rng.integers(s))
                canvas = _Canvas(s, original)
                _pixel_shape(shape, canvas, row, col, rng, cfg)
                mask = canvas.mask
            if fg is not None:
                mask = mask & fg
            if mask.any():
                break

        # the content is drawn even for an empty mask, so the draws after it do not depend on it
        source = sources[int(rng.choice(len(sources), p=np.asarray(source_w) / sum(source_w)))]
        content = self._source_image(source, x8, rng)
        content, augs = augment_source(content, rng, cfg.n_augment)
        if cfg.keep_gray and np.array_equal(x8[..., 0], x8[..., 1]) and np.array_equal(x8[..., 0], x8[..., 2]):
            # after the augmentation: hue and saturation shifts colour even a gray source
            content = np.repeat(np.asarray(Image.fromarray(content).convert("L"))[..., None], 3, axis=2)
        beta = float(rng.uniform(*cfg.beta_range))

        # x_s = x outside the mask, beta * x + (1 - beta) * source inside it (the code's blend);
        # computed on the mask's pixels only
        inside = x[mask]  # [n, 3]
        mixed = beta * inside + (1 - beta) * (content[mask].astype(np.float32) / 255.0)
        delta = (mixed - inside).sum(axis=1) / 3  # mean over RGB of (blended - original), [n]
        # the code leaves pixels whose difference is exactly 0 out of the soft label's mean; a
        # defect that changes no pixel at all is no defect
        changed = delta != 0
        has_defect = bool(changed.any())
        blended = x.copy()
        if has_defect:
            blended[mask] = mixed
        else:
            mask = np.zeros_like(mask)
        out = torch.from_numpy(np.ascontiguousarray(blended.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(mask.astype(np.float32))
        soft = None
        if soft_label:
            # one value for the whole defect (the code: msk[msk > 0] = mean of the sigmoids); the
            # difference is signed, so a defect darker than the image gets a label below 0.5
            value = float(np.mean(1 / (1 + np.exp(-cfg.soft_label_gain * delta[changed])))) if has_defect else 0.0
            soft = mask_t * value
        return SyntheticDefect(image=out, mask=mask_t, soft_label=soft, shape=shape, source=source,
                               has_defect=has_defect, beta=beta, augmentations=augs)


def defect_set(gen: DefectGenerator, images: torch.Tensor, first_key: int, progress: bool = False,
               desc: str = "synthetic defects", soft_label: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Synthetic defects on a stack of normal images, image ``j`` drawn with key ``first_key + j``.

    ``images`` uint8 ``[N, 3, S, S]`` -> ``(defect images uint8 [N, 3, S, S], soft labels float16
    [N, S, S] or None unless ``soft_label``, masks bool [N, S, S])``. uint8 keeps a whole training
    set of defects in memory (about 200 KB per 256 px image); the methods draw a new set every
    few epochs with new keys.
    """
    out, soft, masks = torch.empty_like(images), [], []
    for j in tqdm(range(len(images)), desc=desc, disable=not progress, leave=False):
        d = gen(images[j].float() / 255.0, first_key + j, soft_label=soft_label)
        out[j] = (d.image * 255).round().to(torch.uint8)
        if soft_label:
            soft.append(d.soft_label.half())
        masks.append(d.mask > 0)
    return out, (torch.stack(soft) if soft_label else None), torch.stack(masks)


def fit_generator(shared: DefectGenerator | None, normals: list[Path], image_size: int, seed: int,
                  recipe: SyntheticConfig) -> DefectGenerator:
    """A method's generator with its own ``recipe``: the pipeline's (``FitContext.synthetic``, the
    same normals, seed and DTD folder) when there is one, else one over ``normals``."""
    if shared is not None:
        return shared.with_config(recipe)
    return DefectGenerator(normals, image_size, seed, recipe)
