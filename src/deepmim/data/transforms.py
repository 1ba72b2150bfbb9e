"""Image transforms on uint8 (C, H, W) tensors (C = 1 or 3; the output has as many channels as data.mean).

The pre-training augmentation is the MAE authors' recipe: RandomResizedCrop(scale=(0.2, 1),
ratio=(3/4, 4/3), bicubic) + horizontal flip, then normalise. It follows
torchvision.transforms.v2.RandomResizedCrop's sampling algorithm and its pixels
(`v2.functional.resized_crop`, antialiased; `resized_crop_bicubic` calls its kernel directly), but
draws all random numbers in one call and fuses uint8->float with normalisation: ~0.1 ms instead of
~0.65 ms per 32x32 image with a v2.Compose, which would otherwise cap a CPU core at ~1.5k images/s.

From image files (`PretrainTransform.from_file`, used for ImageFolder datasets) the crop is drawn from
the file's header before decoding (simplejpeg's header parse; PIL's for other files), so a JPEG is
decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's draft mode) whenever the reduced crop
still has at least the output's resolution, and full-size colour JPEGs are decoded by libjpeg-turbo
(simplejpeg, else torchvision) into a channels-last tensor, the layout torch's vectorised uint8
antialiased resize needs (half the resize time of a channel-first one). Same random draws, same crop box
and flip as the tensor path; the same pixels when no reduction applies
(benchmarks/data_throughput.py measures both against the plain PIL + torchvision pipeline).
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

_CROP_TRIES = 10  # as torchvision


def sample_crop_box(
    height: int,
    width: int,
    scale: Tuple[float, float],
    ratio: Tuple[float, float],
    uniforms: List[float],
) -> Tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w) from 4 * 10 uniforms in [0, 1)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(_CROP_TRIES):
        u_area, u_ratio, u_top, u_left = uniforms[4 * attempt : 4 * attempt + 4]
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    # Fallback (as torchvision): central crop with the aspect ratio clamped into range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop_bicubic(image: torch.Tensor, top: int, left: int, h: int, w: int, size: List[int]) -> torch.Tensor:
    """`v2.functional.resized_crop(image, top, left, h, w, size, BICUBIC, antialias=True)`, the same pixels,
    without torchvision's per-call dispatch, which costs as much as the resize itself on small images
    (32 px: 37 vs 73 us). Only CPU uint8 / float32 (C, H, W) tensors with the box inside the image take
    this path (torch's native antialiased bicubic, uint8 included); anything else goes to torchvision."""
    height, width = image.shape[-2:]
    inside = top >= 0 and left >= 0 and top + h <= height and left + w <= width
    if not inside or image.ndim != 3 or image.device.type != "cpu" or image.dtype not in (torch.uint8, torch.float32):
        return F.resized_crop(image, top, left, h, w, size, InterpolationMode.BICUBIC, antialias=True)
    crop = image[:, top : top + h, left : left + w]
    if [h, w] == list(size):
        return crop
    batch = crop.unsqueeze(0)
    if batch.is_contiguous(memory_format=torch.channels_last) and batch.numel() != batch.stride(0):
        # as torchvision does: a 1CHW channels-last view whose batch stride is ambiguous would get a
        # channel-first output (pytorch#68430); restriding keeps the layout (and the vectorised kernel)
        batch = batch.as_strided(batch.shape, (batch.numel(), *batch.stride()[1:]))
    return torch.nn.functional.interpolate(batch, size=list(size), mode="bicubic", align_corners=False, antialias=True)[
        0
    ]


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, PIL's convert("L")


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., channels, H, W): grey repeated to colour, colour to grey by luma (float
    out then, as PIL's "L" before its rounding); anything else is refused."""
    have = image.shape[-3]
    if have == channels:
        return image
    if have == 1:
        return image.expand(*image.shape[:-3], channels, *image.shape[-2:])
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=torch.float32, device=image.device).view(3, 1, 1)
        return (image.to(torch.float32) * weights).sum(dim=-3, keepdim=True)
    raise ValueError(f"cannot turn {have}-channel images into {channels} channels")


@functools.lru_cache(maxsize=None)
def _simplejpeg():
    """simplejpeg (libjpeg-turbo, bytes -> uint8 (H, W, 3)), or None where it is not installed."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


@functools.lru_cache(maxsize=None)
def _torchvision_decoder():
    """torchvision.io's libjpeg-turbo decoder (bytes -> uint8 (3, H, W)), or None where torchvision no
    longer has it (its image decoding is deprecated from 0.29 on, in favour of TorchCodec)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode(data: bytes) -> torch.Tensor:
        with warnings.catch_warnings():  # torchvision warns of the deprecation at every call
            warnings.simplefilter("ignore", DeprecationWarning)
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(buffer, mode=ImageReadMode.RGB)

    return decode


def _channels_last(chw: torch.Tensor) -> torch.Tensor:
    """(3, H, W) whose memory is (H, W, 3): torch's antialiased uint8 resize has a vectorised kernel only
    for this layout (~2x faster than on a channel-first tensor, the same pixels)."""
    return chw.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def decode_colour_jpeg(data, factor: int = 1) -> Optional[torch.Tensor]:
    """uint8 (3, H, W), channels-last in memory, of a colour (YCbCr) JPEG given as bytes or a path, by
    libjpeg-turbo (simplejpeg, else torchvision), at 1/factor scale (DCT scaling; simplejpeg only);
    None when neither can (missing, not a colour JPEG, truncated or corrupt: then PIL decodes it and
    reports a broken file as for every other image)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        with open(data, "rb") as f:
            data = f.read()
    sj = _simplejpeg()
    if sj is not None:
        size = colour_jpeg_size(data)
        if size is None:
            return None
        scaled = {"min_height": -(-size[0] // factor), "min_width": -(-size[1] // factor)} if factor > 1 else {}
        try:
            return torch.from_numpy(sj.decode_jpeg(data, colorspace="RGB", **scaled)).permute(2, 0, 1)
        except ValueError:  # simplejpeg's error for corrupt, truncated or unsupported data
            return None
    decode = _torchvision_decoder()
    if decode is None or factor > 1:
        return None
    try:
        return _channels_last(decode(data))
    except RuntimeError:
        return None


def colour_jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(height, width) of a baseline or progressive colour (YCbCr) JPEG from its header, or None (not a
    JPEG, another colour space, or simplejpeg missing: PIL reads the header then)."""
    sj = _simplejpeg()
    if sj is None or data[:2] != b"\xff\xd8":
        return None
    try:
        height, width, colorspace, _subsampling = sj.decode_jpeg_header(data)
    except ValueError:
        return None
    return (height, width) if colorspace == "YCbCr" else None


def scale_box(box: Tuple[int, int, int, int], size: Tuple[int, int], scaled: Sequence[int]) -> Tuple[int, ...]:
    """A (top, left, h, w) box of an image of `size` (h, w) moved onto the same image decoded at `scaled`
    (h, w), to whole pixels (the identity when nothing was scaled)."""
    if tuple(scaled) == tuple(size):
        return box
    sy, sx = scaled[0] / size[0], scaled[1] / size[1]
    top, left = int(round(box[0] * sy)), int(round(box[1] * sx))
    h = max(1, min(int(round(box[2] * sy)), scaled[0] - top))
    w = max(1, min(int(round(box[3] * sx)), scaled[1] - left))
    return top, left, h, w


def draft_factor(crop_h: int, crop_w: int, size: Sequence[int]) -> int:
    """The largest JPEG decoding reduction (1, 2, 4 or 8) that keeps the crop at or above `size` (h, w)."""
    factor = 1
    while factor < 8 and crop_h >= 2 * factor * size[0] and crop_w >= 2 * factor * size[1]:
        factor *= 2
    return factor


class NormalizeUint8:
    """uint8 (..., C, H, W) -> float32 (x / 255 - mean) / std in one fused multiply-add. The output has one
    channel per value of mean/std: grey images are repeated for colour statistics, colour images turned
    grey (luma) for grey ones, so a dataset's own channel count need not be the model's."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        std_t = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.channels = mean_t.shape[0]
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = match_channels(image, self.channels).to(torch.float32, copy=True)
        return image.mul_(self.scale).add_(self.shift)


class PretrainTransform:
    """uint8 (C, H, W) -> normalised float (len(mean), img_size, img_size): random resized crop + flip."""

    def __init__(
        self,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale_min: float = 0.2,
        hflip: bool = True,
        ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ):
        self.size = [int(img_size), int(img_size)]
        self.scale = (float(crop_scale_min), 1.0)
        self.ratio = ratio
        self.hflip = hflip
        self.normalize = NormalizeUint8(mean, std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        uniforms = torch.rand(4 * _CROP_TRIES + 1, dtype=torch.float64).tolist()  # global CPU RNG
        top, left, h, w = sample_crop_box(image.shape[-2], image.shape[-1], self.scale, self.ratio, uniforms)
        image = resized_crop_bicubic(image, top, left, h, w, self.size)
        return self._finish(image, uniforms)

    def _finish(self, image: torch.Tensor, uniforms: List[float]) -> torch.Tensor:
        if self.hflip and uniforms[-1] < 0.5:
            image = image.flip(-1)
        return self.normalize(image)

    def from_file(self, path: str) -> torch.Tensor:
        """The same result as `self(load_rgb(path))` (same draws, crop box and flip), decoding no more than
        the crop needs. A colour JPEG is decoded by libjpeg-turbo (`decode_colour_jpeg`, which refuses
        truncated files: PIL then reports them) into a channels-last tensor, at 1/2, 1/4 or 1/8 scale when
        the crop is at least twice the output size in both directions (the box moved onto the reduced
        image to whole pixels), and resized with the tensor path's kernel. Without simplejpeg, reduced
        decoding is PIL's draft mode, resized with PIL's bicubic over the exact (fractional) box; other
        images are decoded by PIL."""
        uniforms = torch.rand(4 * _CROP_TRIES + 1, dtype=torch.float64).tolist()
        with open(path, "rb") as f:
            data = f.read()
        size = colour_jpeg_size(data)  # from simplejpeg's header parse, ~30x cheaper than PIL's open
        if size is not None:
            box = sample_crop_box(*size, self.scale, self.ratio, uniforms)
            factor = draft_factor(box[2], box[3], self.size)
            chw = decode_colour_jpeg(data, factor)
            if chw is not None:
                return self._crop_finish(chw, scale_box(box, size, chw.shape[1:]), uniforms)
        return self._from_pil(data, uniforms)

    def _from_pil(self, data: bytes, uniforms: List[float]) -> torch.Tensor:
        from .folder import _to_rgb

        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: nothing decoded yet
            box = top, left, h, w = sample_crop_box(height, width, self.scale, self.ratio, uniforms)
            factor = draft_factor(h, w, self.size)
            chw = None
            if _simplejpeg() is None and factor == 1 and image.format == "JPEG" and image.mode == "RGB":
                chw = decode_colour_jpeg(data)  # torchvision's decoder (simplejpeg has refused this file)
            if chw is None:
                if factor > 1:
                    image.draft(image.mode, (width // factor, height // factor))  # no-op for non-JPEG files
                image.load()
                rgb = _to_rgb(image)
                if rgb.size != (width, height):  # decoded at reduced scale
                    sx, sy = rgb.size[0] / width, rgb.size[1] / height
                    scaled = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
                    out = rgb.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC, box=scaled)
                    return self._finish(torch.from_numpy(np.array(out)).permute(2, 0, 1), uniforms)
                chw = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # channels-last view, no copy
        return self._crop_finish(chw, box, uniforms)

    def _crop_finish(self, chw: torch.Tensor, box: Tuple[int, int, int, int], uniforms: List[float]) -> torch.Tensor:
        crop = resized_crop_bicubic(chw, *box, self.size)
        return self._finish(crop, uniforms)

    def __repr__(self) -> str:
        return (
            f"PretrainTransform(size={self.size[0]}, scale={self.scale}, ratio={self.ratio}, "
            f"bicubic+antialias, hflip={self.hflip})"
        )


def build_pretrain_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale_min: float = 0.2,
    hflip: bool = True,
) -> PretrainTransform:
    """The MAE pre-training augmentation (randomness from the global CPU torch RNG)."""
    return PretrainTransform(img_size, mean, std, crop_scale_min, hflip)


def build_eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_ratio: float = 1.0,
) -> v2.Compose:
    """Deterministic: resize the short side to img_size / crop_ratio, centre-crop img_size, normalise.

    crop_ratio=1.0 (default) just resizes to img_size (square inputs stay whole);
    0.875 is the usual ImageNet evaluation (resize 256, crop 224).
    """
    resize_to = int(round(img_size / crop_ratio))
    return v2.Compose(
        [
            v2.Resize(resize_to, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(img_size),
            NormalizeUint8(mean, std),
        ]
    )


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo normalisation for plotting: (..., C, H, W) float -> same shape in [0, 1] (clamped)."""
    mean_t = torch.as_tensor(list(mean), dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std_t = torch.as_tensor(list(std), dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * std_t + mean_t).clamp_(0.0, 1.0)
