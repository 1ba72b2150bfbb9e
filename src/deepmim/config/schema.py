"""Typed configuration for every deepmim job, all in this file: pre-training, probes and analysis,
fine-tuning, segmentation.

Recipes (YAML) and command-line overrides are mapped onto these dataclasses by
`deepmim.config.loader`, which rejects unknown keys and wrong types before any
work starts. What a task checks beyond types (ranges, combinations) is its `validate`.
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

    # embedded | imagefolder | images (a folder of unlabelled images, any depth) | idx | wds (WebDataset shards) |
    # hf (Hugging Face datasets); pre-training reads data without labels (data/labels.py)
    name: str = "embedded"
    # imagefolder root; folder with MNIST/Fashion-MNIST IDX files; wds: a `deepmim data pack` folder, a shard
    # index (.json) or a brace pattern (data/wds.py); hf: a save_to_disk folder or parquet files (data/hf.py)
    path: Optional[str] = None
    split: str = "train"
    img_size: int = 32
    num_samples: int = 10000  # embedded dataset only
    # At most this many images of every split: a fixed class-balanced subset (data/subset.py), the same for
    # every run and seed. For idx / imagefolder; the embedded data has num_samples. None: the whole split.
    max_samples: Optional[int] = None
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    crop_scale_min: float = 0.2  # RandomResizedCrop(scale=(crop_scale_min, 1.0)), bicubic
    hflip: bool = True
    strict: bool = False  # fail on the first unreadable image instead of skipping it
    num_workers: int = 2
    image_key: Optional[str] = None  # wds: the image entry ("jpg;png;..."); hf: the image column ("image")
    label_key: Optional[str] = None  # wds: the label entry ("cls"); hf: the label column ("label")
    shuffle_buffer: int = 1000  # wds: samples each loader worker mixes its shards' streams through


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
    # Weight decay never touches 1-D tensors (biases, norms) or names ending in ".bias". true: nor the model's
    # tokens and position tables (its no_weight_decay() names: cls/mask tokens, learnable position
    # embeddings, relative-position bias tables), timm's and MAE fine-tuning's convention: they are
    # embeddings, not weights of a linear map, so shrinking them towards zero regularises nothing.
    # false: the authors' pre-training and segmentation rule (timm 0.3.2 add_weight_decay, mmseg's layer-decay
    # constructor), which decays them; the recipes that reproduce the authors set it, docs/reproducing.md
    no_decay_tokens: bool = True


@dataclass
class WandbConfig:
    """train.loggers=[..., wandb]: a Weights & Biases run (files in output_dir/wandb)."""

    project: str = "deepmim"
    entity: Optional[str] = None
    name: Optional[str] = None  # None: the output folder's name
    mode: Optional[str] = None  # online | offline (nothing leaves the machine; `wandb sync` later) | disabled
    tags: List[str] = field(default_factory=list)


@dataclass
class MlflowConfig:
    """train.loggers=[..., mlflow]: an MLflow run."""

    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else a file store in output_dir/mlruns
    experiment: str = "deepmim"
    run_name: Optional[str] = None  # None: the output folder's name


@dataclass
class TrainConfig:
    """The shared training loop."""

    epochs: int = 1600
    batch_size: int = 64  # per process
    accum_steps: int = 1
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    output_dir: str = "runs/pretrain"  # one run per folder: a fresh run refuses a folder holding a run's files
    resume: Optional[str] = None  # None | auto | path to a checkpoint
    overwrite: bool = False  # a fresh run in a folder with a run: move its files to output_dir/replaced-N/ first
    save_every_steps: int = 0  # 0: only at epoch ends
    save_every_epochs: int = 0  # keep a numbered copy every N epochs (0: never)
    log_every_steps: int = 10
    max_steps: Optional[int] = None  # stop early after this many optimizer steps (the schedule is unchanged)
    progress: bool = True
    # auto: a live bar on a terminal, else (files, SLURM, CI) one line every progress_seconds / progress_steps
    progress_style: str = "auto"  # auto | bar | lines
    progress_seconds: float = 30.0  # lines: at most one per this many seconds (checked at logging steps); 0: off
    progress_steps: int = 0  # lines: also one every this many steps; 0: time only
    print_config: bool = False  # print the whole resolved config at start (it is always in output_dir/config.yaml)
    # metrics.jsonl is always written; tensorboard | wandb | mlflow mirror it (training/trackers.py)
    loggers: List[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    tensorboard: bool = True  # false: drop tensorboard from loggers (the older switch)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    log_artifacts: bool = False  # true: config.yaml and the final weights go to W&B / MLflow as artifacts at the end
    plots: bool = True  # loss.png and reconstruction.png in output_dir at the end
    # Under torchrun: ddp (DistributedDataParallel) | fsdp (FSDP2 fully_shard per block; ViT-L/H)
    strategy: str = "ddp"
    # Under torchrun: seconds a collective (an all-reduce, a barrier) waits for the other processes before the
    # job stops with a message, so a frozen or hung process ends the job instead of holding every GPU forever.
    # Long enough for the slowest wait of a healthy run (rank 0 writing a large checkpoint); torch's NCCL default
    dist_timeout: float = 600.0
    activation_checkpointing: bool = False  # recompute block activations in backward (less memory)
    # torch.compile each Transformer block: true | false | auto (on when the schedule is long enough to repay
    # the compile time: >= 2000 optimizer steps on a GPU, >= 20000 on a CPU under bf16, never on a CPU in
    # fp32, where it measured no gain; training/compile.py)
    compile: Union[bool, str] = "auto"
    # Keep freed host memory in the process (glibc mmap/trim thresholds raised) instead of page-faulting
    # every step's activations in again; resident memory then stays at its peak (training/host_memory.py)
    reuse_host_memory: bool = True
    # Divergence guard (training/guard.py): stop, before any checkpoint is written from it, at a loss this many
    # times its running average (and above every earlier one) or weights whose norm grows this many times
    # between checks; null: only non-finite losses, gradients and weights stop the run
    divergence_factor: Optional[float] = 10.0
    # Stop signals (training/signals.py): SIGTERM, SIGINT and this one finish the step, save a resumable
    # checkpoint and exit with 128 + the signal's number (SIGINT 130, SIGTERM 143, SIGUSR1 138); null: none extra
    save_signal: Optional[str] = "SIGUSR1"
    requeue: bool = False  # under SLURM: `scontrol requeue $SLURM_JOB_ID` after a signal's checkpoint
    # CPU training beside other processes: at logging steps, run on the cores they leave free (torch threads
    # = planned threads minus the cores others keep busy; training/threads.py). False: the thread count stays
    # fixed, so a run's numbers never depend on what else the machine runs (bitwise-repeatable runs on a
    # shared machine)
    adapt_threads: bool = True


@dataclass
class PretrainTrainConfig(TrainConfig):
    """TrainConfig + pre-training's online probe (training/online_probe.py says what its numbers mean).

    online_probe=true trains a linear classifier per block on the detached features of the masked forward
    and logs its top-1 (%) per step and epoch (metrics.jsonl, TensorBoard); it never changes the
    pre-training weights (tested: identical weights with and without)."""

    online_probe: bool = False
    online_probe_blocks: Union[str, List[int]] = "supervised"  # supervised (the decoders' blocks) | all | [2, 4]
    online_probe_pool: str = "avg"  # avg (mean of the visible patch tokens) | cls
    online_probe_lr: float = 1e-3  # AdamW, constant, no weight decay
    online_probe_val_images: int = 2000  # first N val images (unmasked) scored at every epoch end; 0: none


@dataclass
class PretrainConfig:
    """`deepmim pretrain`: everything one pre-training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)


@dataclass
class FeatureConfig:
    """Frozen-encoder features for probes (`deepmim knn`, `deepmim probe-layers`)."""

    blocks: Optional[List[int]] = None  # 1-based encoder blocks; None: every block (knn: the last only)
    # avg (mean of the patch tokens) | cls. avg by measurement: pre-trained MIM encoders are read 1-9 points
    # better through it at every block, untrained ones equally (README, "Probe defaults"); linprobe keeps cls (MAE)
    pool: str = "avg"
    batch_size: int = 64
    # auto: features/ in the user's cache directory ($DEEPMIM_CACHE, else $XDG_CACHE_HOME/deepmim, else
    # ~/.cache/deepmim; analysis/features.py), never the working directory; a path: there; None or "": no cache
    cache_dir: Optional[str] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 where the hardware computes it (as training); features are stored as float32 either way
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    crop_ratio: float = 1.0  # eval transform: resize img_size / crop_ratio, centre-crop img_size
    preset: Optional[str] = None  # model preset for checkpoints without a deepmim config (authors', MAE, timm)
    progress: bool = True
    train_split: str = "train"
    val_split: str = "val"
    # keep freed host memory in the process instead of page-faulting each batch in again (as
    # train.reuse_host_memory; measured 1.3-1.4x on the micro encoder's CPU forward at batch 256)
    reuse_host_memory: bool = True


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
    features: FeatureConfig = field(default_factory=lambda: FeatureConfig(pool="cls"))  # MAE's protocol: cls token
    probe: LinearProbeConfig = field(default_factory=lambda: LinearProbeConfig(epochs=90, warmup_epochs=10.0))
    augment: bool = True
    crop_scale_min: float = 0.08  # torchvision's RandomResizedCrop default, as MAE's main_linprobe
    hflip: bool = True
    num_classes: Optional[int] = None  # when set, the data must have exactly this many classes
    output_dir: str = "runs/linprobe"


@dataclass
class AnalysisConfig:
    """What `deepmim analyze` measures besides the probes, and on how many images."""

    measures: List[str] = field(
        default_factory=lambda: ["probe", "knn", "attention", "cka", "reconstruction", "loss", "convergence"]
    )
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


# ----------------------------------------------------------------------------- deepmim finetune


@dataclass
class ClassifierConfig:
    """`deepmim finetune` model.*: the pre-trained encoder it starts from and the new head."""

    checkpoint: Optional[str] = None  # pre-trained weights: deepmim, the authors', MAE or timm layouts
    preset: Optional[str] = None  # architecture for files without a deepmim config, or for random init
    num_classes: Optional[int] = None  # None: the data's class count
    global_pool: str = "avg"  # avg: mean of patch tokens + new norm (MAE fine-tuning) | token: cls token
    drop_path: float = 0.1
    head_init_std: float = 2e-5


@dataclass
class AugmentConfig:
    """timm's fine-tuning augmentation (RandAugment, random erasing, Mixup/CutMix, label smoothing)."""

    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec; null (or none / off): off
    reprob: float = 0.25  # random erasing probability
    crop_scale_min: float = 0.08
    # colour jitter strength, applied only when auto_augment is off (timm's rule); null: none, as MAE's fine-tuning
    color_jitter: Optional[float] = None
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    eval_crop_pct: float = 0.875  # resize img_size / crop_pct, centre crop img_size (256 -> 224)


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """AdamW with layer-wise lr decay, the authors' fine-tuning defaults."""

    base_lr: float = 1e-4  # the authors' blr; lr = blr * batch / 256
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 5.0
    min_lr: float = 1e-6
    layer_decay: float = 0.6  # block i's lr scale: layer_decay ** (depth - i)


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """The shared loop, fine-tuning defaults, and an optional EMA of the weights."""

    epochs: int = 100
    output_dir: str = "runs/finetune"
    ema_decay: Optional[float] = None  # e.g. 0.9998: evaluate an EMA of the weights as well


@dataclass
class FinetuneConfig:
    """`deepmim finetune` and `deepmim evaluate`: the MAE/BEiT fine-tuning recipe."""

    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(num_workers=2))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    val_split: str = "val"


# ----------------------------------------------------------------------------- deepmim segment


@dataclass
class SegDataConfig:
    """Where the images and masks are and how training crops are made (mmseg's ADE20K pipeline)."""

    name: str = "embedded"  # embedded | ade20k | maskfolder
    path: Optional[str] = None  # root with images/<split>/ and <mask_dir>/<split>/
    mask_dir: str = "annotations"  # maskfolder: folder beside images/ holding <stem>.png masks
    train_split: str = "train"  # ade20k maps train/val to training/validation
    val_split: str = "val"
    num_classes: Optional[int] = None  # maskfolder: required; ade20k 150; embedded 11 (background + 10 shapes)
    reduce_zero_label: Optional[bool] = None  # label 0 -> ignore, others - 1 (None: True for ade20k only)
    ignore_index: int = 255
    scale: List[int] = field(default_factory=lambda: [2048, 512])  # (long, short) edge bound of the base size
    ratio_range: List[float] = field(default_factory=lambda: [0.5, 2.0])  # training rescale of the base size
    crop_size: int = 512
    cat_max_ratio: float = 0.75  # a crop where one class covers more than this is redrawn (up to 10 times)
    hflip: bool = True
    photometric: bool = True
    mean: List[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])  # on 0-255 pixels
    std: List[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    img_size: int = 64  # embedded: the rendered size
    num_samples: int = 512  # embedded: training images
    val_samples: int = 64  # embedded: validation images
    num_workers: int = 2


@dataclass
class SegModelConfig:
    """`deepmim segment` model.*: UperNet on a pre-trained ViT (BEiT options in the backbone)."""

    checkpoint: Optional[str] = None  # pre-trained weights: deepmim, the authors', MAE or timm layouts
    preset: Optional[str] = None  # architecture for files without a deepmim config, or for random init
    num_classes: Optional[int] = None  # None: the data's class count
    out_indices: Optional[List[int]] = None  # 0-based blocks feeding the pyramid; None: 3,5,7,11 of 12, scaled
    channels: int = 768  # UperHead width (the authors' ViT-B setting)
    aux_channels: int = 256  # FCN auxiliary head width; 0: no auxiliary head
    aux_weight: float = 0.4
    pool_scales: List[int] = field(default_factory=lambda: [1, 2, 3, 6])
    dropout: float = 0.1
    drop_path: float = 0.1
    rel_pos_bias: bool = True  # BEiT's per-block relative position bias (starts at zero)
    layer_scale: Optional[float] = 1.0  # BEiT's layer scale initial value; null: none


@dataclass
class SegmentOptimConfig(OptimConfig):
    """AdamW, layer decay and mmcv's iteration-based poly schedule with linear warm-up."""

    lr: Optional[float] = 5e-5  # absolute, for the authors' 16-image batch
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.05
    layer_decay: float = 0.9
    schedule: str = "poly"  # poly (mmcv's, with linear warm-up) | cosine
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6  # the warm-up starts at this fraction of the lr
    poly_power: float = 1.0
    min_lr: float = 0.0
    warmup_epochs: float = 0.0  # derived from warmup_iters; do not set


@dataclass
class SegmentTrainConfig(TrainConfig):
    """The shared loop counted in iterations: a Trainer epoch is one interval of eval_every."""

    iterations: int = 160_000
    eval_every: int = 16_000  # iterations between validations (and numbered checkpoints)
    batch_size: int = 2  # per process: the authors ran 8 GPUs x 2
    epochs: int = 0  # derived: iterations / eval_every; do not set
    output_dir: str = "runs/segment"
    log_every_steps: int = 50
    plots: bool = False


@dataclass
class SegEvalConfig:
    """Inference for the validation scores: sliding window or whole image, optional flip."""

    mode: str = "slide"  # slide (windows of crop_size every stride pixels) | whole
    crop_size: Optional[int] = None  # None: data.crop_size
    stride: int = 341
    flip: bool = False  # average the softmax of the image and its mirror
    save_predictions: Optional[str] = None  # folder for image | prediction | label PNGs


@dataclass
class SegmentConfig:
    """`deepmim segment train` and `deepmim segment eval`: the ADE20K protocol of the paper."""

    model: SegModelConfig = field(default_factory=SegModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    optim: SegmentOptimConfig = field(default_factory=SegmentOptimConfig)
    train: SegmentTrainConfig = field(default_factory=SegmentTrainConfig)
    eval: SegEvalConfig = field(default_factory=SegEvalConfig)
