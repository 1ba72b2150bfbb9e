"""What every arm kind provides: its model, and the stage that produces the weights the measures read."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import yaml

from ....config.schema import ModelConfig
from ..stages import Stage


def yaml_value(value: Any) -> str:
    """A value as the right-hand side of a key=value override (YAML flow style, quoted where needed)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    return text[: -len("\n...\n")] if text.endswith("\n...\n") else text.strip()


def mapping_overrides(tree: Dict[str, Any], prefix: str = "") -> List[str]:
    """{'train': {'epochs': 4}} -> ['train.epochs=4']: a nested mapping as the dotted overrides the command line
    takes (lists whole), so a study stage is exactly a `deepmim pretrain/finetune` command."""
    out: List[str] = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += mapping_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={yaml_value(value)}")
    return out


class Arm:
    """One row of the comparison. `training_stage(seed, folder)` returns the stage whose result holds
    `checkpoint` (the final weights, an encoder `load_encoder` reads), `epoch_checkpoints` ({epochs: path} along
    training, or None when the arm does not train), `images` and `flops` (its training cost)."""

    kind = ""
    stage_name = ""  # the training stage: its record, its key in results.json, its sub-folder of <arm>/seed<k>/
    trains = False  # True: the stage keeps checkpoints along training (convergence is measured on them)

    def __init__(self, cfg, study):
        self.cfg, self.study = cfg, study
        self.name = cfg.name

    def model_config(self) -> ModelConfig:
        raise NotImplementedError

    def training_stage(self, seed: int, folder: Path) -> Stage:
        raise NotImplementedError

    def final_checkpoint(self, folder: Path) -> Path:
        """Where the training stage leaves the final weights (known before it runs)."""
        raise NotImplementedError
