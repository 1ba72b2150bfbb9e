"""Pixel target (MAE): the masked patches' pixels, optionally normalised per patch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.masking import Masking
from .base import Target, masked_mean, patchify, register_target


@dataclass
class PixelConfig:
    norm_pix: bool = True  # MAE's norm_pix_loss: each target patch to zero mean, unit variance
    eps: float = 1e-6


@register_target("pixel")
class PixelTarget(Target):
    Config = PixelConfig

    @property
    def dim(self) -> int:
        return self.patch_size * self.patch_size * self.in_chans

    def forward(self, images: torch.Tensor, masking: Masking) -> torch.Tensor:
        target = patchify(images.float(), self.patch_size)
        if self.cfg.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + self.cfg.eps) ** 0.5
        return target

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        return masked_mean(per_patch, mask)

    def to_pixels(self, pred: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if not self.cfg.norm_pix:
            return pred.float()
        # Undo the per-patch normalisation with the true patch statistics (as MAE's visualisation).
        patches = patchify(images.float(), self.patch_size)
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        return pred.float() * (var + self.cfg.eps) ** 0.5 + mean
