"""Typed configuration of `deepmim study`: a declared comparison of arms over seeds (tasks/study/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .schema import DataConfig, KnnConfig, LinearProbeConfig


@dataclass
class ArmConfig:
    """One row of the comparison. kind: pretrain (MAE or DeepMIM, any preset and target, pre-trained then
    evaluated) | random (the same encoder untrained: its frozen features, and fine-tuning from it, which is
    supervised training from scratch with the study's fine-tuning recipe)."""

    name: str = ""
    kind: str = "pretrain"
    # The model mapping of a pretrain config: preset + any overrides (heads, target, mask_ratio, ...).
    # random: which encoder to leave untrained; empty: the first pretrain arm's.
    model: Dict[str, Any] = field(default_factory=dict)
    overrides: List[str] = field(default_factory=list)  # dotted pretrain overrides for this arm only


@dataclass
class StudyFinetuneConfig:
    """End-to-end fine-tuning of every arm with one recipe, so arms compare at equal fine-tuning epochs."""

    enabled: bool = True
    recipe: Optional[str] = "finetune_demo"  # a finetune recipe (bundled name or YAML path)
    overrides: Dict[str, Any] = field(default_factory=dict)  # FinetuneConfig keys over the recipe (train, optim...)


@dataclass
class StudyEvalConfig:
    """What every arm and seed is measured on: probes on frozen features of the train -> val splits."""

    val_split: str = "val"  # scored split; data.split trains (pre-training, fine-tuning, probes)
    pools: List[str] = field(default_factory=lambda: ["cls", "avg"])
    blocks: Optional[List[int]] = None  # None: every block
    probe: LinearProbeConfig = field(default_factory=lambda: LinearProbeConfig(epochs=30))  # seed: the study's
    knn: KnnConfig = field(default_factory=KnnConfig)
    knn_enabled: bool = True
    attention_images: int = 256  # val images for the attention distances; 0: not measured
    convergence: bool = True  # probes on the initial weights and every checkpoint-epochNNNN.pt of the run
    convergence_pools: List[str] = field(default_factory=lambda: ["avg"])
    batch_size: int = 256  # feature extraction
    crop_ratio: float = 1.0
    device: str = "auto"


@dataclass
class StudyConfig:
    """`deepmim study`: arms x seeds, each stage an ordinary run in output_dir/<arm>/seed<k>/<stage>/."""

    title: str = "deepmim study"
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    data: DataConfig = field(
        default_factory=DataConfig
    )  # every stage's data: data.split trains, evaluate.val_split scores
    pretrain: Dict[str, Any] = field(default_factory=dict)  # PretrainConfig keys (optim, train) for every pretrain arm
    # DataConfig keys over `data` for pre-training only, e.g. {max_samples: null}: pre-train on every (unlabelled)
    # train image while the probes and fine-tuning learn from the labelled subset (the low-label setting).
    pretrain_data: Dict[str, Any] = field(default_factory=dict)
    finetune: StudyFinetuneConfig = field(default_factory=StudyFinetuneConfig)
    arms: List[ArmConfig] = field(default_factory=list)
    evaluate: StudyEvalConfig = field(default_factory=StudyEvalConfig)
    output_dir: str = "runs/study"
    # A stage whose inputs changed since it ran: refuse (stop, say what changed) | rerun (delete and redo it
    # and everything downstream of it).
    on_change: str = "refuse"
