"""Arm kinds: how an arm gets the weights every measure reads. A new kind is one small module with an
`Arm` subclass (its `kind` and `stage_name`) and one line in ARM_KINDS; results and tables read the
training stages' names from here."""

from __future__ import annotations

from ....config.loader import ConfigError
from .base import Arm
from .pretrain import PretrainArm
from .random import RandomArm

ARM_KINDS = {"pretrain": PretrainArm, "random": RandomArm}
TRAINING_STAGES = tuple(arm.stage_name for arm in ARM_KINDS.values())  # the stage that gives each kind its weights


def training_stage(kind: str) -> str:
    """The name of the stage that gives an arm of `kind` its weights (its key in results.json)."""
    return ARM_KINDS[kind].stage_name


def build_arm(cfg, study) -> Arm:
    if cfg.kind not in ARM_KINDS:
        raise ConfigError(f"arm '{cfg.name}': unknown kind '{cfg.kind}'; choose one of {', '.join(ARM_KINDS)}")
    return ARM_KINDS[cfg.kind](cfg, study)


__all__ = ["ARM_KINDS", "Arm", "PretrainArm", "RandomArm", "TRAINING_STAGES", "build_arm", "training_stage"]
