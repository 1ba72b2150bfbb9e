"""HOG target (MaskFeat): per patch, a histogram of oriented gradients of every 8x8 cell.

Binning follows `skimage.feature.hog` exactly (it is the reference the tests compare to):
gradients by central differences [-1, 0, 1] (zero on the image border, which reflect
padding gives), unsigned orientation atan2(d_row, d_col) in [0, 180) degrees, each pixel's
magnitude voted whole into bin floor(angle / (180 / bins)) (skimage does not interpolate
between bins; `interpolate: true` spreads it linearly over the two nearest bin centres as
Dalal & Triggs do), summed per cell and divided by the cell's area. Each cell's histogram
of each colour channel is L2-normalised on its own (skimage's block_norm='L2' with 1x1-cell
blocks; MaskFeat also normalises per cell and channel), v / sqrt(|v|^2 + eps^2).

Gradients are taken on the whole image, so cells see across patch borders (as MaskFeat).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from ..config.loader import ConfigError
from ..config.schema import IMAGENET_MEAN, IMAGENET_STD
from ..models.masking import Masking
from .base import Target, masked_mean, register_target


@dataclass
class HogConfig:
    orientations: int = 9
    cell_size: int = 8  # pixels per cell side; must divide the patch size
    interpolate: bool = False  # False: skimage's / MaskFeat's hard binning
    eps: float = 1e-5  # skimage's
    # The student's input normalisation, undone before taking gradients. deepmim fills these
    # from the data config (data.mean / data.std); the defaults are ImageNet's.
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))


def image_gradients(images: torch.Tensor):
    """(N, C, H, W) -> d_row, d_col: the [-1, 0, 1] filter per channel, 0 on the border rows/cols."""
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")  # x[-1] = x[1]: the border difference is 0
    d_row = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
    d_col = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]
    return d_row, d_col


def cell_histograms(
    images: torch.Tensor, orientations: int = 9, cell_size: int = 8, interpolate: bool = False
) -> torch.Tensor:
    """(N, C, H, W) pixels -> (N, C, H // cell, W // cell, orientations), not normalised."""
    n, c, h, w = images.shape
    d_row, d_col = image_gradients(images)
    magnitude = torch.hypot(d_row, d_col)
    angle = torch.remainder(torch.rad2deg(torch.atan2(d_row, d_col)), 180.0)
    position = angle / (180.0 / orientations)  # in bin widths
    votes = magnitude.new_zeros(n, c, orientations, h, w)
    if interpolate:  # linear between the two nearest bin centres (centre of bin i: i + 0.5)
        left = torch.floor(position - 0.5)
        right_share = position - 0.5 - left
        votes.scatter_add_(2, (left.long() % orientations).unsqueeze(2), (magnitude * (1 - right_share)).unsqueeze(2))
        votes.scatter_add_(2, ((left.long() + 1) % orientations).unsqueeze(2), (magnitude * right_share).unsqueeze(2))
    else:
        index = torch.floor(position).long() % orientations
        votes.scatter_add_(2, index.unsqueeze(2), magnitude.unsqueeze(2))
    gh, gw = h // cell_size, w // cell_size
    votes = votes[..., : gh * cell_size, : gw * cell_size].reshape(n, c, orientations, gh, cell_size, gw, cell_size)
    hist = votes.sum(dim=(4, 6)) / (cell_size * cell_size)
    return hist.permute(0, 1, 3, 4, 2)


@register_target("hog")
class HogTarget(Target):
    """Per patch: (patch/cell)^2 cells x C channels x bins values, ordered (cell row, cell col,
    channel, bin). MSE on the masked patches. Computed in fp32 whatever the caller's autocast."""

    Config = HogConfig

    def __init__(self, cfg: HogConfig, patch_size: int, in_chans: int):
        super().__init__(cfg, patch_size, in_chans)
        if cfg.orientations < 1 or cfg.cell_size < 1:
            raise ConfigError("hog target: orientations and cell_size must be positive")
        if patch_size % cfg.cell_size:
            raise ConfigError(f"hog target: cell_size {cfg.cell_size} must divide the patch size {patch_size}")
        if len(cfg.mean) != in_chans or len(cfg.std) != in_chans:
            raise ConfigError(
                f"hog target: mean/std need {in_chans} values (one per channel), got {len(cfg.mean)} and {len(cfg.std)}"
            )
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, -1, 1, 1), persistent=False)

    @property
    def cells_per_patch(self) -> int:
        return self.patch_size // self.cfg.cell_size

    @property
    def dim(self) -> int:
        return self.cells_per_patch**2 * self.in_chans * self.cfg.orientations

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masking: Masking) -> torch.Tensor:
        with torch.autocast(device_type=images.device.type, enabled=False):
            pixels = images.float() * self.std.float() + self.mean.float()
            hist = cell_histograms(pixels, self.cfg.orientations, self.cfg.cell_size, self.cfg.interpolate)
            hist = hist / torch.sqrt((hist**2).sum(dim=-1, keepdim=True) + self.cfg.eps**2)
        n, c, gh, gw, bins = hist.shape
        k = self.cells_per_patch
        hist = hist.reshape(n, c, gh // k, k, gw // k, k, bins)
        hist = hist.permute(0, 2, 4, 3, 5, 1, 6)  # n, patch row, patch col, cell row, cell col, c, bin
        return hist.reshape(n, (gh // k) * (gw // k), self.dim)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        return masked_mean(per_patch, mask)
