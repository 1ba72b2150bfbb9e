"""What DeepMIM asks of a reconstruction target, and the registry that names the targets.

DeepMIM builds each head's target by name through `build_target`; the targets themselves live in
`deepmim.targets`, whose modules register the built-in ones (pixel, hog, teacher, hybrid) with
`@register_target` when the package is imported, which `deepmim/__init__.py` does, as timm's
model registry is filled by importing `timm.models`. So the dependency points one way: targets/
imports this interface (and the models a target may need, e.g. the hybrid target's frozen model);
models/ never imports targets/.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Tuple, Type

import torch
from torch import nn

from ..config.loader import ConfigError, from_dict
from .masking import Masking


class Target(nn.Module):
    """Base class. Subclasses set `Config` (a dataclass) and implement `dim`, `forward`, `loss`; a target
    that reads a frozen model's weights (a teacher) sets `needs_weights`, so a run refuses to start without them.

    One instance is shared by all heads with the same target spec, so expensive targets
    (a teacher network) run once per batch.
    """

    Config: Type[Any]
    needs_weights = False  # True: it runs a frozen model whose weights its `path` names (a run needs them)

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


def register_builtin_targets() -> None:
    """The built-in targets live in deepmim.targets, a floor above this one, and register themselves when
    it is imported; the package root imports it (deepmim.load_builtin_targets) when asked here, so a
    lookup finds them however the model was reached (`from deepmim.models import DeepMIM` included)."""
    root = sys.modules.get(__name__.partition(".")[0])
    load = getattr(root, "load_builtin_targets", None)
    if load is not None:
        load()


def target_config(spec: Dict[str, Any], path: str = "target") -> Tuple[Type[Target], Any]:
    """{'name': 'pixel', 'norm_pix': True} -> (the target's class, its checked Config): every key and type
    refused as the run would refuse it, without building anything (a teacher's weights stay unread)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping such as {{name: pixel}}, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in TARGETS:
        register_builtin_targets()
    if not isinstance(name, str) or name not in TARGETS:
        raise ConfigError(f"{path}.name: unknown target {name!r}; choose one of {sorted(TARGETS)}")
    cls = TARGETS[name]
    return cls, from_dict(cls.Config, spec, f"{path}.")


def build_target(spec: Dict[str, Any], patch_size: int, in_chans: int, path: str = "target") -> Target:
    """{'name': 'pixel', 'norm_pix': True} -> a Target, validating the options."""
    cls, cfg = target_config(spec, path)
    return cls(cfg, patch_size=patch_size, in_chans=in_chans)
