"""kind: random: the arm's encoder left untrained, exactly as pre-training of the same seed starts.

`deepmim pretrain` seeds torch with train.seed and builds the encoder first, so this encoder equals the one
every pretrain arm with the same encoder config starts from (MAE and DeepMIM alike): it is their epoch 0.
Its frozen features are the floor the probes are read against; fine-tuning it with the study's recipe is
supervised training from scratch (same code path, same recipe, only the weights differ).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ....config.loader import ConfigError
from ....config.schema import ModelConfig
from ....models.factory import resolve_model_config
from ...probe import write_initial_checkpoint
from ..stages import Stage
from .base import Arm


class RandomArm(Arm):
    kind = "random"
    stage_name = "init"

    def model_config(self) -> ModelConfig:
        model = self.cfg.model or next((a.model for a in self.study.arms if a.kind == "pretrain"), None)
        if not model:
            raise ConfigError(f"arm '{self.name}' (random) has no model and the study no pretrain arm to take it from")
        return resolve_model_config(dict(model))

    def final_checkpoint(self, folder: Path) -> Path:
        return folder / "checkpoint.pt"

    def training_stage(self, seed: int, folder: Path) -> Stage:
        model = self.model_config()
        path = self.final_checkpoint(folder)

        def run():
            write_initial_checkpoint(model, seed, path)
            return {
                "checkpoint": str(path),
                "epoch_checkpoints": None,
                "images": 0,
                "flops": 0,
                "summary": f"untrained encoder written to {path}",
            }

        return Stage(self.stage_name, {"kind": self.kind, "model": dataclasses.asdict(model), "seed": seed}, run)
