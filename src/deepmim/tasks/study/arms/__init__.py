"""Arm kinds: how an arm gets the weights every measure reads. A new kind is one small module with an
`Arm` subclass and one line in ARM_KINDS."""
from __future__ import annotations

from ....config.loader import ConfigError
from .base import Arm
from .pretrain import PretrainArm
from .random import RandomArm

ARM_KINDS = {"pretrain": PretrainArm, "random": RandomArm}


def build_arm(cfg, study) -> Arm:
    if cfg.kind not in ARM_KINDS:
        raise ConfigError(f"arm '{cfg.name}': unknown kind '{cfg.kind}'; choose one of {', '.join(ARM_KINDS)}")
    return ARM_KINDS[cfg.kind](cfg, study)


__all__ = ["ARM_KINDS", "Arm", "PretrainArm", "RandomArm", "build_arm"]
