"""EmbeddedShapes: a procedurally generated 10-class image dataset that needs no files.

It exists so that every recipe, test and tutorial runs offline, at any image size, with
labels and segmentation masks good enough to check that pre-training learned something.
Each item is drawn lazily from `np.random.default_rng([seed, split_id, index])`, so any
index is reproducible on its own, whatever the worker count or reading order.

An item is one shape family (the class) drawn as an implicit function f(u, v) <= 0 in
shape coordinates, with nuisance variation the model must see through: random
foreground/background colours (with guaranteed luminance contrast), position, scale,
rotation (full for rotation-free classes, +-15 degrees where orientation defines the
class), a background shading gradient and per-pixel noise. Edges are anti-aliased by
using f as an approximate distance: alpha = clip(0.5 - f_in_pixels, 0, 1).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from deepmim.data.errors import DataError

SPLIT_IDS: Dict[str, int] = {"train": 0, "val": 1, "test": 2}

_STRIPE_FREQ = 2 * math.pi / 0.6  # stripe period 0.6 shape units: 3 whole stripes per patch
_CHECKER_FREQ = math.pi / 0.45  # checker cell 0.45 shape units: 4x4 cells per patch


def _norm(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sqrt(u * u + v * v)


def _disk(u, v):
    return _norm(u, v) - 1.0


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) - 0.8


def _triangle(u, v):
    # Equilateral, circumradius 1: three half-planes with inradius 0.5.
    a, b = 0.8660254 * u, 0.5 * v
    return np.maximum(np.maximum(v, -a - b), a - b) - 0.5


def _ring(u, v):
    return np.abs(_norm(u, v) - 0.75) - 0.25


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 0.25, av - 1.0), np.maximum(av - 0.25, au - 1.0))


def _patch(u, v):
    return np.maximum(np.abs(u), np.abs(v)) - 0.9


def _horizontal_stripes(u, v):
    return np.maximum(_patch(u, v), -np.cos(_STRIPE_FREQ * v) / _STRIPE_FREQ)


def _vertical_stripes(u, v):
    return np.maximum(_patch(u, v), -np.cos(_STRIPE_FREQ * u) / _STRIPE_FREQ)


def _checkerboard(u, v):
    checks = np.sin(_CHECKER_FREQ * u) * np.sin(_CHECKER_FREQ * v)
    return np.maximum(_patch(u, v), -checks / _CHECKER_FREQ)


def _diamond(u, v):
    # Tall rhombus (half-width 0.7, half-height 1); 0.55 keeps f close to a pixel distance.
    return (np.abs(u) / 0.7 + np.abs(v) - 1.0) * 0.55


def _star(u, v):
    return _norm(u, v) - (0.6 + 0.4 * np.cos(5.0 * np.arctan2(v, u)))


_FULL_TURN = 2 * math.pi
_JITTER = math.radians(15)

# (name, implicit function, rotation range in radians, centred on 0)
_FAMILIES: List[Tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray], float]] = [
    ("disk", _disk, 0.0),
    ("square", _square, _JITTER),
    ("triangle", _triangle, _FULL_TURN),
    ("ring", _ring, 0.0),
    ("cross", _cross, _FULL_TURN),
    ("horizontal_stripes", _horizontal_stripes, _JITTER),
    ("vertical_stripes", _vertical_stripes, _JITTER),
    ("checkerboard", _checkerboard, _JITTER),
    ("diamond", _diamond, _JITTER),
    ("star", _star, _FULL_TURN),
]

CLASSES: List[str] = [name for name, _, _ in _FAMILIES]


# Colours live in [24, 231] and shading (+-8) plus noise (+-12) cannot leave [0, 255], so
# the final uint8 cast needs no clipping (two fewer array passes per item).
_COLOUR_LOW, _COLOUR_RANGE = 24.0, 207.0
_SHADING = 8.0
_MAX_NOISE = 24.0


def _colour(lum: float, chroma: List[float]) -> List[float]:
    """An RGB colour (3 floats) with roughly luminance `lum` (0..1) and a zero-mean tint."""
    mean = (chroma[0] + chroma[1] + chroma[2]) / 3.0
    return [_COLOUR_LOW + _COLOUR_RANGE * min(max(lum + 0.5 * (c - mean), 0.0), 1.0) for c in chroma]


def _contrasting_luminances(p_bg: float, p_delta: float, p_side: float) -> Tuple[float, float]:
    """Background and foreground luminance at least ~0.3 apart, foreground brighter or darker."""
    bg = 0.1 + 0.8 * p_bg
    delta = 0.3 + 0.3 * p_delta
    up_ok, down_ok = bg + delta <= 0.95, bg - delta >= 0.05
    go_up = up_ok and (not down_ok or p_side < 0.5)
    if not up_ok and not down_ok:
        go_up = bg < 0.5
    fg = bg + delta if go_up else bg - delta
    return bg, min(max(fg, 0.03), 0.97)


class EmbeddedShapes(Dataset):
    """`num_samples` generated items of size `img_size`; `split` ("train"/"val"/"test") changes the stream.

    Labels cycle `index % 10`, so any prefix of the dataset is class-balanced.
    `dataset[i]` -> (uint8 image (3, H, W), label); `mask(i)` -> int64 (H, W) with
    0 = background and label + 1 on the shape pixels of the very same item.
    Images are kept once rendered when the whole set fits in CACHE_BYTES (the demo's 6144 32px images:
    19 MB), so later epochs only copy them: rendering is ~0.2 ms per image, most of the demo's loading.
    """

    classes = CLASSES
    CACHE_BYTES = 64 * 2**20

    def __init__(self, num_samples: int, img_size: int = 32, split: str = "train", seed: int = 0):
        if num_samples <= 0:
            raise DataError(f"data.num_samples must be positive for the embedded dataset, got {num_samples}")
        if img_size < 8:
            raise DataError(f"data.img_size must be at least 8 for the embedded dataset, got {img_size}")
        if split not in SPLIT_IDS:
            raise DataError(f"unknown split '{split}' for the embedded dataset; choose one of {sorted(SPLIT_IDS)}")
        self.num_samples = int(num_samples)
        self.img_size = int(img_size)
        self.split = split
        self.seed = int(seed)
        self._split_id = SPLIT_IDS[split]
        # Pixel-centre coordinates in [-1, 1], as a row (x) and a column (y) for broadcasting.
        centres = ((np.arange(img_size, dtype=np.float32) + 0.5) / img_size * 2.0 - 1.0).astype(np.float32)
        self._x = centres[None, :]
        self._y = centres[:, None]
        fits = self.num_samples * 3 * self.img_size**2 <= self.CACHE_BYTES
        self._images: Optional[List[Optional[torch.Tensor]]] = [None] * self.num_samples if fits else None

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        index = self._check_index(index)
        label = index % len(_FAMILIES)
        if self._images is not None and self._images[index] is not None:
            return self._images[index].clone(), label  # a copy: transforms may work in place
        image, label, _ = self._render(index, with_image=True, with_mask=False)
        if self._images is not None:
            self._images[index] = image.clone()
        return image, label

    def mask(self, index: int) -> torch.Tensor:
        """Per-pixel class mask (H, W) int64 of item `index`: 0 background, label + 1 shape."""
        _, _, mask = self._render(self._check_index(index), with_image=False, with_mask=True)
        return mask

    def get_with_mask(self, index: int) -> Tuple[torch.Tensor, int, torch.Tensor]:
        """(image, label, mask) of one item from a single generation (for segmentation)."""
        return self._render(self._check_index(index), with_image=True, with_mask=True)

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for EmbeddedShapes of length {self.num_samples}")
        return index

    def _render(self, index: int, with_image: bool, with_mask: bool):
        rng = np.random.default_rng([self.seed, self._split_id, index])
        # Every shape/colour parameter from one draw (as plain floats: numpy scalar maths is
        # slow); the noise is drawn after, so `mask()` can stop early with identical geometry.
        p = rng.random(16).tolist()
        label = index % len(_FAMILIES)
        _, implicit, rotation_range = _FAMILIES[label]

        angle = (p[0] - 0.5) * rotation_range
        radius = 0.45 + 0.35 * p[1]  # shape radius as a fraction of the half image
        reach = 1.0 - 0.7 * radius  # centre range that keeps most of the shape in view
        cx, cy = (2.0 * p[2] - 1.0) * reach, (2.0 * p[3] - 1.0) * reach
        cos_r, sin_r = math.cos(angle) / radius, math.sin(angle) / radius
        dx, dy = self._x - cx, self._y - cy  # float32 stays float32 with Python scalars
        u = dx * cos_r + dy * sin_r
        v = dy * cos_r - dx * sin_r
        f = implicit(u, v)

        mask = torch.from_numpy(np.where(f <= 0, label + 1, 0).astype(np.int64)) if with_mask else None
        if not with_image:
            return None, label, mask

        pixels_per_unit = radius * self.img_size / 2.0
        alpha = np.minimum(np.maximum(0.5 - f * pixels_per_unit, 0.0), 1.0)

        bg_lum, fg_lum = _contrasting_luminances(p[4], p[5], p[6])
        bg, fg = _colour(bg_lum, p[7:10]), _colour(fg_lum, p[10:13])
        step = [fg_c - bg_c for fg_c, bg_c in zip(fg, bg)]
        bg_and_step = np.array([bg, step], dtype=np.float32).reshape(2, 3, 1, 1)
        # Texture shared by all channels: a linear lighting gradient plus uniform noise;
        # the +0.5 makes the final truncating cast round to nearest.
        amplitude = _MAX_NOISE * (0.3 + 0.7 * p[15])
        gradient_x = (_SHADING * (2.0 * p[13] - 1.0)) * self._x + (0.5 - amplitude / 2.0)
        gradient_y = (_SHADING * (2.0 * p[14] - 1.0)) * self._y
        texture = rng.random((self.img_size, self.img_size), dtype=np.float32)
        texture *= amplitude
        texture += gradient_x
        texture += gradient_y

        image = alpha[None] * bg_and_step[1]
        image += bg_and_step[0]
        image += texture
        return torch.from_numpy(image.astype(np.uint8)), label, mask
