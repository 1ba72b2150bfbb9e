"""Helpers every target shares. What a target is (the `Target` interface DeepMIM consumes) and the
registry that names them live in models/target.py; they are re-exported here for target authors."""

from __future__ import annotations

import torch

from ..models.target import TARGETS, Target, build_target, register_target

__all__ = ["TARGETS", "Target", "build_target", "register_target", "masked_mean", "patchify", "unpatchify"]


def masked_mean(per_patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average a (N, L) per-patch loss over the masked patches only."""
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), MAE's order (row-major patches, pixels then channels)."""
    n, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(n, c, gh, patch_size, gw, patch_size)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, patch_size * patch_size * c)


def unpatchify(patches: torch.Tensor, patch_size: int, in_chans: int = 3) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, H, W), the inverse of `patchify` for a square grid."""
    n, num, _ = patches.shape
    g = int(round(num**0.5))
    x = patches.reshape(n, g, g, patch_size, patch_size, in_chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, in_chans, g * patch_size, g * patch_size)
