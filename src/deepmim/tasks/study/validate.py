"""A study config is checked before anything runs: names, kinds, seeds, pools, keys the study owns, and that
every pretrain / finetune config it will make resolves (a typo stops here, not an hour in)."""

from __future__ import annotations

import re
from typing import Iterable, List, Optional

from ...config.loader import ConfigError, load_config
from ...config.study import StudyConfig
from .arms import build_arm
from .arms.base import mapping_overrides
from .stages import ON_CHANGE

POOLS = ("cls", "avg")
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# Keys the study sets itself in every stage: a value given for them would be overwritten, so they are refused.
PRETRAIN_OWNED = ("data", "model", "train.seed", "train.output_dir", "train.resume", "train.overwrite")
FINETUNE_OWNED = (
    "data",
    "model.checkpoint",
    "model.preset",
    "val_split",
    "train.seed",
    "train.output_dir",
    "train.resume",
    "train.overwrite",
)


def load_study_config(recipe: Optional[str], overrides: Iterable[str] = ()) -> StudyConfig:
    """Recipe (`task: study`) + dotted overrides -> a validated StudyConfig."""
    cfg = load_config(StudyConfig, recipe, overrides, task="study")
    validate_study(cfg)
    return cfg


def validate_study(cfg: StudyConfig) -> None:
    _check_arms_and_seeds(cfg)
    _check_evaluate(cfg)
    if cfg.on_change not in ON_CHANGE:
        raise ConfigError(f"on_change must be one of {ON_CHANGE}, got {cfg.on_change!r}")
    _refuse_owned(_dotted(cfg.pretrain), "pretrain", PRETRAIN_OWNED)
    _refuse_owned(_dotted(cfg.finetune.overrides), "finetune.overrides", FINETUNE_OWNED)
    for arm in cfg.arms:
        _refuse_owned([o.split("=", 1)[0] for o in arm.overrides], f"arms.{arm.name}.overrides", PRETRAIN_OWNED)
    for arm in cfg.arms:  # every arm's run config resolves
        build_arm(arm, cfg).model_config()
    if cfg.finetune.enabled:
        from ..finetune import load_finetune_config

        if not cfg.finetune.recipe:
            raise ConfigError("finetune.recipe is not set: name a finetune recipe, or set finetune.enabled=false")
        load_finetune_config(cfg.finetune.recipe, mapping_overrides(cfg.finetune.overrides))


def _check_arms_and_seeds(cfg: StudyConfig) -> None:
    if not cfg.arms:
        raise ConfigError("the study has no arms: give arms: [{name: mae, kind: pretrain, model: {preset: ...}}, ...]")
    names = [a.name for a in cfg.arms]
    for name in names:
        if not NAME.match(name or ""):
            raise ConfigError(f"arm name {name!r}: use letters, digits, '_', '-' or '.' (it names a folder)")
    if len(set(names)) != len(names):
        raise ConfigError(f"arm names must be distinct, got {names}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {cfg.seeds}")


def _check_evaluate(cfg: StudyConfig) -> None:
    ev = cfg.evaluate
    for key, pools in (("evaluate.pools", ev.pools), ("evaluate.convergence_pools", ev.convergence_pools)):
        if not pools or any(p not in POOLS for p in pools):
            raise ConfigError(f"{key} must list some of {POOLS}, got {pools}")
    if ev.attention_images < 0:
        raise ConfigError(
            f"evaluate.attention_images must be >= 0 (0: no attention distances), got {ev.attention_images}"
        )


def _dotted(tree, prefix: str = "") -> List[str]:
    """{'train': {'seed': 1}} -> ['train.seed']."""
    if not isinstance(tree, dict) or not tree:
        return [prefix.rstrip(".")] if prefix else []
    return [k for key, value in tree.items() for k in _dotted(value, f"{prefix}{key}.")]


def _refuse_owned(keys: List[str], where: str, owned) -> None:
    for key in keys:
        hit = next((o for o in owned if key == o or key.startswith(o + ".")), None)
        if hit:
            what = {
                "data": "the study's own data section (every arm and stage shares it)",
                "model": "the arm's model",
            }.get(hit, "the study, per seed and stage")
            raise ConfigError(f"{where}: {key} is set by {what}; remove it here")
