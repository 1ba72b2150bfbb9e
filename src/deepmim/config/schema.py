"""Typed configuration for every deepmim job.

Recipes (YAML) and command-line overrides are mapped onto these dataclasses by
`deepmim.config.loader`, which rejects unknown keys and wrong types before any
work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class EncoderConfig:
    """A ViT encoder; names and defaults follow timm's VisionTransformer."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6


@dataclass
class HeadConfig:
    """One supervised depth: a decoder reading the output of encoder block `block` (1-based)."""

    block: int = 12
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    weight: float = 1.0
    # Pass the tapped feature through the encoder's final norm. None: only for the last block
    # (what the authors do: intermediate taps raw, the last one after the norm).
    final_norm: Optional[bool] = None
    # Reconstruction target of this head; None inherits ModelConfig.target.
    target: Optional[Dict[str, Any]] = None


@dataclass
class ModelConfig:
    """A masked-image-modeling model: encoder + one decoder per supervised depth."""

    preset: Optional[str] = None  # start from a named preset; keys given here override it
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    heads: List[HeadConfig] = field(default_factory=lambda: [HeadConfig()])
    mask_ratio: float = 0.75
    target: Dict[str, Any] = field(default_factory=lambda: {"name": "pixel", "norm_pix": True})
    # auto: SDPA except bf16 on CPUs (measured rule, see benchmarks/) | fused | math | measure: time both
    # kernels at start on this machine and these shapes, record the winner in config.yaml and checkpoints
    attn_impl: str = "auto"


@dataclass
class DataConfig:
    """Where images come from and how they are augmented for pre-training."""

    name: str = "embedded"  # embedded | imagefolder | idx
    path: Optional[str] = None  # imagefolder root, or folder with MNIST/Fashion-MNIST IDX files
    split: str = "train"
    img_size: int = 32
    num_samples: int = 10000  # embedded dataset only
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    crop_scale_min: float = 0.2  # RandomResizedCrop(scale=(crop_scale_min, 1.0)), bicubic
    hflip: bool = True
    strict: bool = False  # fail on the first unreadable image instead of skipping it
    num_workers: int = 2


@dataclass
class OptimConfig:
    """AdamW with MAE's lr scaling and schedule."""

    base_lr: float = 1.5e-4  # lr = base_lr * effective_batch / 256
    lr: Optional[float] = None  # absolute lr; overrides base_lr when set
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_epochs: float = 40.0
    clip_grad: Optional[float] = None


@dataclass
class TrainConfig:
    """The shared training loop."""

    epochs: int = 1600
    batch_size: int = 64  # per process
    accum_steps: int = 1
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    output_dir: str = "runs/pretrain"
    resume: Optional[str] = None  # None | auto | path to a checkpoint
    save_every_steps: int = 0  # 0: only at epoch ends
    save_every_epochs: int = 0  # keep a numbered copy every N epochs (0: never)
    log_every_steps: int = 10
    max_steps: Optional[int] = None  # stop early after this many optimizer steps (the schedule is unchanged)
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True  # loss.png and reconstruction.png in output_dir at the end
    # Under torchrun: ddp (DistributedDataParallel) | fsdp (FSDP2 fully_shard per block; ViT-L/H)
    strategy: str = "ddp"
    activation_checkpointing: bool = False  # recompute block activations in backward (less memory)
    # torch.compile each Transformer block: true | false | auto (on when the schedule has >= 2000 optimizer
    # steps, which repay the compile time; training/compile.py, benchmarks/README.md)
    compile: Union[bool, str] = "auto"


@dataclass
class PretrainConfig:
    """`deepmim pretrain`: everything one pre-training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class FeatureConfig:
    """Frozen-encoder features for probes (`deepmim knn`, `deepmim probe-layers`)."""

    blocks: Optional[List[int]] = None  # 1-based encoder blocks; None: every block (knn: the last only)
    pool: str = "cls"  # cls | avg (mean of the patch tokens)
    batch_size: int = 64
    cache_dir: Optional[str] = "runs/feature_cache"  # None or "": no cache
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 where the hardware computes it (as training); features are stored as float32 either way
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    crop_ratio: float = 1.0  # eval transform: resize img_size / crop_ratio, centre-crop img_size
    preset: Optional[str] = None  # model preset for checkpoints without a deepmim config (authors', MAE, timm)
    progress: bool = True
    train_split: str = "train"
    val_split: str = "val"


@dataclass
class LinearProbeConfig:
    """MAE's linear probe on cached features: BatchNorm1d(affine=False) + Linear, LARS, warm-up + cosine."""

    epochs: int = 50  # cheap on cached features; LARS needs a few hundred steps to converge
    batch_size: int = 256
    # lr = base_lr * batch_size / 256. MAE's linprobe uses blr 0.1 at batch 16384, i.e. an absolute lr of
    # 6.4; LARS moves weights by ~lr * 1e-3 of their norm per step, so a small-batch run needs MAE's
    # absolute lr (not its blr) to learn at all: 6.4 at batch 256.
    base_lr: float = 6.4
    lr: Optional[float] = None  # absolute lr; overrides base_lr when set
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    optimizer: str = "lars"  # lars (timm.optim.Lars, MAE's trust ratio on weights) | sgd
    seed: int = 0


@dataclass
class KnnConfig:
    """DINO's weighted k-NN: cosine similarity, top-k votes weighted by exp(sim / temperature)."""

    k: int = 20
    temperature: float = 0.07


@dataclass
class ProbeConfig:
    """`deepmim knn` and `deepmim probe-layers`: data + features + the classifier on top."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    num_classes: Optional[int] = None  # when set, the data must have exactly this many classes
    output_dir: str = "runs/probe"


@dataclass
class LinprobeConfig:
    """`deepmim linprobe`: MAE's linear-probing protocol on the last block's features.

    augment=True: end to end with MAE's linprobe augmentation (RandomResizedCrop(scale=(crop_scale_min, 1)),
    flip) through the frozen encoder every epoch; augment=False: cached eval-transform features (fast).
    Validation always uses cached eval-transform features."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    probe: LinearProbeConfig = field(default_factory=lambda: LinearProbeConfig(epochs=90, warmup_epochs=10.0))
    augment: bool = True
    crop_scale_min: float = 0.08  # torchvision's RandomResizedCrop default, as MAE's main_linprobe
    hflip: bool = True
    num_classes: Optional[int] = None  # when set, the data must have exactly this many classes
    output_dir: str = "runs/linprobe"


@dataclass
class AnalysisConfig:
    """What `deepmim analyze` measures besides the probes, and on how many images."""

    measures: List[str] = field(default_factory=lambda: ["probe", "knn", "attention", "cka", "reconstruction",
                                                         "loss", "convergence"])
    attention_images: int = 256  # val images for the attention distances (full images, no masking)
    cka_samples: int = 2000  # val examples (pooled features, as the probes read them) for linear CKA
    reconstruction_images: int = 8  # first val images, under one fixed mask (seed below)
    mask_seed: int = 0
    convergence_knn: bool = True  # also k-NN per block on every periodic checkpoint


@dataclass
class AnalyzeConfig(ProbeConfig):
    """`deepmim analyze`: ProbeConfig (data, features, probe, knn, num_classes) + analysis.*."""

    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    output_dir: str = "runs/analyze"
