"""What a reconstruction target is: a module that turns a batch into per-patch targets
and scores a prediction against them on the masked patches."""
from __future__ import annotations

from typing import Any, Callable, Dict, Type

import torch
from torch import nn

from ..config.loader import ConfigError, from_dict
from ..models.masking import Masking


class Target(nn.Module):
    """Base class. Subclasses set `Config` (a dataclass) and implement `dim_for`, `forward`, `loss`.

    One instance is shared by all heads with the same target spec, so expensive targets
    (a teacher network) run once per batch.
    """

    Config: Type[Any]

    def __init__(self, cfg: Any, patch_size: int, in_chans: int):
        super().__init__()
        self.cfg = cfg
        self.patch_size = patch_size
        self.in_chans = in_chans

    @property
    def dim(self) -> int:
        """Values predicted per patch."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, masking: Masking) -> torch.Tensor:
        """(N, C, H, W) normalised images -> (N, L, dim) targets."""
        raise NotImplementedError

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over masked patches (mask == 1) of a per-patch loss."""
        raise NotImplementedError

    def store_frozen_in(self, dtype: torch.dtype) -> None:
        """Keep frozen networks (a teacher) in the training's compute dtype, cast once here rather than
        by autocast at every op of every step. Targets without one ignore this."""

    def to_pixels(self, pred: torch.Tensor, images: torch.Tensor) -> torch.Tensor | None:
        """Predictions as (N, L, p*p*C) pixel patches in the input's normalisation, for pictures.
        None where the target is not pixels."""
        return None


TARGETS: Dict[str, Type[Target]] = {}


def register_target(name: str) -> Callable[[Type[Target]], Type[Target]]:
    def add(cls: Type[Target]) -> Type[Target]:
        TARGETS[name] = cls
        return cls
    return add


def build_target(spec: Dict[str, Any], patch_size: int, in_chans: int, path: str = "target") -> Target:
    """{'name': 'pixel', 'norm_pix': True} -> a Target, validating the options."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in TARGETS:
        raise ConfigError(f"{path}.name: unknown target {name!r}; choose one of {sorted(TARGETS)}")
    cls = TARGETS[name]
    cfg = from_dict(cls.Config, spec, f"{path}.")
    return cls(cfg, patch_size=patch_size, in_chans=in_chans)


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
    g = int(round(num ** 0.5))
    x = patches.reshape(n, g, g, patch_size, patch_size, in_chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, in_chans, g * patch_size, g * patch_size)
