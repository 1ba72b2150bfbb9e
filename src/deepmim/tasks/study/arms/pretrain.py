"""kind: pretrain: an ordinary `deepmim pretrain` run (MAE or DeepMIM, any preset and target) per seed."""

from __future__ import annotations

from pathlib import Path

from ....checkpoint import LAST, epoch_checkpoints
from ....config.loader import ConfigError, to_dict
from ....config.schema import ModelConfig, PretrainConfig
from ..flops import pretrain_flops_per_image, sample_images
from ..stages import Stage, strip_cosmetic
from .base import Arm, mapping_overrides, yaml_value


class PretrainArm(Arm):
    kind = "pretrain"
    stage_name = "pretrain"
    trains = True

    def overrides(self, seed: int, folder: Path) -> list:
        """The `deepmim pretrain` command line of this arm and seed: model, the study's pretrain keys, the
        study's data with pretrain_data's keys over it, the arm's own overrides, then seed, folder and resume."""
        if not self.cfg.model:
            raise ConfigError(
                f"arm '{self.name}' (pretrain) needs a model, e.g. model: {{preset: mae_vit_micro_p4_28}}"
            )
        return (
            mapping_overrides({"model": self.cfg.model})
            + mapping_overrides(self.study.pretrain)
            + mapping_overrides({"data": {**to_dict(self.study.data), **self.study.pretrain_data}})
            + list(self.cfg.overrides)
            + [f"train.seed={seed}", f"train.output_dir={yaml_value(str(folder))}", "train.resume=auto"]
        )

    def pretrain_config(self, seed: int, folder: Path) -> PretrainConfig:
        from ...pretrain import load_pretrain_config

        cfg = load_pretrain_config(None, self.overrides(seed, folder))
        if cfg.train.max_steps is not None:
            raise ConfigError(f"arm '{self.name}': train.max_steps stops a run early; a study compares finished runs")
        return cfg

    def model_config(self) -> ModelConfig:
        return self.pretrain_config(0, Path(".")).model

    def final_checkpoint(self, folder: Path) -> Path:
        return folder / LAST

    def training_stage(self, seed: int, folder: Path) -> Stage:
        cfg = self.pretrain_config(seed, folder)
        command = "deepmim pretrain " + " ".join(self.overrides(seed, folder))

        def run():
            from ...pretrain import run_pretrain

            result = run_pretrain(cfg)
            images = result.step * cfg.train.batch_size * cfg.train.accum_steps
            per_image = pretrain_flops_per_image(cfg.model, sample_images(cfg.data, cfg.data.split, cfg.data.img_size))
            loss = result.last_metrics.get("loss", float("nan"))
            return {
                "checkpoint": str(result.checkpoint),
                "epoch_checkpoints": {str(e): str(p) for e, p in epoch_checkpoints(folder).items()},
                "steps": result.step,
                "epochs": cfg.train.epochs,
                "images": images,
                "flops_per_image": per_image,
                "flops": per_image * images,
                "last_loss": loss,
                "command": command,
                "summary": f"{result.step} steps, mean loss of the last epoch {loss:.4f}",
            }

        return Stage(self.stage_name, {"kind": self.kind, "pretrain": strip_cosmetic(to_dict(cfg))}, run, folder)
