"""`deepmim finetune` and `deepmim evaluate`: the MAE/BEiT fine-tuning recipe on a pre-trained encoder.

The classifier is timm's VisionTransformer (global average pooling with a new norm, head
initialised with std 2e-5, drop path), built from our encoder's weights; layer-wise lr decay,
RandAugment, random erasing, Mixup/CutMix, soft-target cross-entropy and EMA all come from timm.
Training runs in the shared loop, so AMP, accumulation, exact resume and logging are the same.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..config.loader import ConfigError, dump_yaml, load_config, to_dict
from ..config.schema import DataConfig, EncoderConfig, OptimConfig, TrainConfig
from ..training import Trainer, TrainResult, resolve_device, resolve_precision
from ..training.logging import say
from ..training.loop import TrainHooks


@dataclass
class ClassifierConfig:
    checkpoint: Optional[str] = None  # pre-trained weights: deepmim, the authors', MAE or timm layouts
    preset: Optional[str] = None  # architecture for files without a deepmim config, or for random init
    num_classes: Optional[int] = None  # None: the data's class count
    global_pool: str = "avg"  # avg: mean of patch tokens + new norm (MAE fine-tuning) | token: cls token
    drop_path: float = 0.1
    head_init_std: float = 2e-5


@dataclass
class AugmentConfig:
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec; null: off
    reprob: float = 0.25  # random erasing probability
    crop_scale_min: float = 0.08
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    eval_crop_pct: float = 0.875  # resize img_size / crop_pct, centre crop img_size (256 -> 224)


@dataclass
class FinetuneOptimConfig(OptimConfig):
    base_lr: float = 1e-4  # the authors' blr; lr = blr * batch / 256
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 5.0
    min_lr: float = 1e-6
    layer_decay: float = 0.6  # block i's lr scale: layer_decay ** (depth - i)


@dataclass
class FinetuneTrainConfig(TrainConfig):
    epochs: int = 100
    output_dir: str = "runs/finetune"
    ema_decay: Optional[float] = None  # e.g. 0.9998: evaluate an EMA of the weights as well


@dataclass
class FinetuneConfig:
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(num_workers=2))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    val_split: str = "val"


def load_finetune_config(recipe: Optional[str], overrides=()) -> FinetuneConfig:
    return load_config(FinetuneConfig, recipe, overrides, task="finetune")


# ----------------------------------------------------------------------------- the classifier


def encoder_config_for(cfg: ClassifierConfig) -> Tuple[EncoderConfig, Optional[Dict[str, torch.Tensor]]]:
    """The encoder architecture and weights named by the config (weights None for random init)."""
    from ..models.export import encoder_state_dict
    from ..models.loading import load_encoder
    from ..models.presets import preset_config

    preset = preset_config(cfg.preset) if cfg.preset else None
    if cfg.checkpoint:
        encoder = load_encoder(cfg.checkpoint, preset)
        return encoder.cfg, encoder_state_dict(encoder)
    if preset is None:
        raise ConfigError("set model.checkpoint (pre-trained weights) or model.preset (random initialisation)")
    return preset.encoder, None


def vit_classifier(enc: EncoderConfig, num_classes: int, img_size: int, global_pool: str = "avg",
                   drop_path: float = 0.0) -> nn.Module:
    """timm's VisionTransformer with the architecture of `enc` (avg pooling: new fc_norm, no final norm)."""
    from timm.models.vision_transformer import VisionTransformer

    if global_pool not in ("avg", "token"):
        raise ConfigError(f"model.global_pool must be avg or token, got {global_pool!r}")
    return VisionTransformer(img_size=img_size, patch_size=enc.patch_size, in_chans=enc.in_chans,
                             embed_dim=enc.embed_dim, depth=enc.depth, num_heads=enc.num_heads,
                             mlp_ratio=enc.mlp_ratio, qkv_bias=enc.qkv_bias, num_classes=num_classes,
                             global_pool=global_pool, drop_path_rate=drop_path,
                             norm_layer=partial(nn.LayerNorm, eps=enc.norm_eps))


def build_classifier(cfg: ClassifierConfig, num_classes: int, img_size: int) -> Tuple[nn.Module, EncoderConfig]:
    """The classifier initialised from the pre-trained encoder: position embedding resampled when
    img_size differs; with average pooling the pre-trained final norm is dropped (MAE)."""
    from timm.layers import resample_abs_pos_embed, trunc_normal_

    enc, state = encoder_config_for(cfg)
    vit = vit_classifier(enc, num_classes, img_size, cfg.global_pool, cfg.drop_path)
    if state is not None:
        grid = img_size // enc.patch_size
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [grid, grid], num_prefix_tokens=1)
        if cfg.global_pool == "avg":
            state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        missing, unexpected = vit.load_state_dict(state, strict=False)
        new = [k for k in missing if not k.startswith(("head.", "fc_norm.", "norm."))]
        if new or unexpected:
            raise ConfigError(f"pre-trained weights do not fit the classifier: missing {new}, unexpected {unexpected}")
    trunc_normal_(vit.head.weight, std=cfg.head_init_std)
    nn.init.zeros_(vit.head.bias)
    return vit, enc


def layer_decay_groups(model: nn.Module, optim: FinetuneOptimConfig) -> List[Dict[str, Any]]:
    """timm's BEiT-style groups: patch embed/cls/pos = layer 0, block i = layer i + 1, head = L + 1;
    lr scale = layer_decay ** (L + 1 - layer_id); no weight decay on 1-D params and tokens."""
    from timm.optim import param_groups_layer_decay

    return param_groups_layer_decay(model, weight_decay=optim.weight_decay, layer_decay=optim.layer_decay,
                                    no_weight_decay_list=list(model.no_weight_decay()))


# ----------------------------------------------------------------------------- data


def num_classes_of(dataset) -> int:
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise ConfigError("cannot tell the number of classes of this dataset; set model.num_classes")
    return len(classes)


def build_transforms(cfg: FinetuneConfig):
    """timm's training transform (RandomResizedCrop, flip, RandAugment, random erasing) and its
    evaluation transform, applied to our uint8 tensors through PIL."""
    from timm.data import create_transform
    from torchvision.transforms import v2

    from ..data.compat import patch_timm_posterize

    patch_timm_posterize()
    d, a = cfg.data, cfg.augment
    train = create_transform(d.img_size, is_training=True, scale=(a.crop_scale_min, 1.0), hflip=0.5 if d.hflip else 0.,
                             auto_augment=a.auto_augment, interpolation="bicubic", re_prob=a.reprob,
                             re_mode="pixel", re_count=1, mean=tuple(d.mean), std=tuple(d.std))
    evaluate = create_transform(d.img_size, is_training=False, interpolation="bicubic", crop_pct=a.eval_crop_pct,
                                mean=tuple(d.mean), std=tuple(d.std))
    to_pil = v2.ToPILImage()
    return (lambda x: train(to_pil(x))), (lambda x: evaluate(to_pil(x)))


def build_eval_loader(cfg: DataConfig, split: str, transform, batch_size: int, rank: int = 0, world_size: int = 1):
    """The split's loader; under torch.distributed each process gets a disjoint shard (no padding, so no
    image is counted twice once `evaluate` sums the counts)."""
    from ..data import TransformedDataset, build_dataset, collate_skip_broken
    from ..training.distributed import shard_indices

    dataset = build_dataset(cfg, split)
    mapped = TransformedDataset(dataset, transform)
    if world_size > 1:
        mapped = torch.utils.data.Subset(mapped, shard_indices(len(mapped), rank, world_size))
    loader = torch.utils.data.DataLoader(mapped, batch_size=batch_size, shuffle=False, num_workers=cfg.num_workers,
                                         collate_fn=collate_skip_broken)
    return dataset, loader


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: str) -> Dict[str, float]:
    """top-1, top-5 (when there are 5+ classes) and cross-entropy over the whole loader; under
    torch.distributed the counts of every process's shard are summed (one all-reduce, at the end)."""
    from ..training.distributed import all_reduce_sum
    from ..training.precision import autocast

    model.eval()
    counts = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, images
    num_classes = getattr(model, "num_classes", 0)
    for batch in loader:
        if batch.images.shape[0] == 0:
            continue
        images, labels = batch.images.to(device), batch.labels.to(device)
        with autocast(device, precision):
            logits = model(images).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        counts += torch.stack([(top[:, 0] == labels).sum().double(),
                               (top == labels[:, None]).any(dim=1).sum().double(),
                               nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
                               torch.tensor(float(labels.numel()), dtype=torch.float64, device=device)])
        num_classes = logits.shape[1]
    correct1, correct5, loss_sum, total = all_reduce_sum(counts).tolist()
    if total == 0:
        raise ConfigError("the evaluation split has no readable images")
    result = {"top1": 100.0 * correct1 / total, "loss": loss_sum / total, "images": float(total)}
    if num_classes >= 5:
        result["top5"] = 100.0 * correct5 / total
    return result


class FinetuneHooks(TrainHooks):
    """Evaluate after every epoch (and the EMA weights, when kept); remember the best top-1."""

    def __init__(self, model: nn.Module, val_loader, device, precision, ema_decay: Optional[float]):
        from timm.utils import ModelEmaV3

        self.model, self.val_loader, self.device, self.precision = model, val_loader, device, precision
        self.ema = ModelEmaV3(model, decay=ema_decay) if ema_decay else None
        self.best_top1 = -1.0

    def after_optimizer_step(self, trainer) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=trainer.step)

    def after_epoch(self, trainer, epoch: int) -> Dict[str, float]:
        result = evaluate(self.model, self.val_loader, self.device, self.precision)
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.val_loader, self.device, self.precision)
            result.update({f"ema_{k}": v for k, v in ema.items() if k != "images"})
        self.best_top1 = max(self.best_top1, result["top1"])
        result["best_top1"] = self.best_top1
        self.model.train()
        return result

    def state_dict(self) -> Dict[str, Any]:
        state = {"best_top1": self.best_top1}
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best_top1 = state.get("best_top1", -1.0)
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])


# ----------------------------------------------------------------------------- the task


def make_loss(cfg: FinetuneConfig, num_classes: int):
    """Mixup/CutMix + soft-target cross-entropy (timm), seeded per step for exact resume."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    a = cfg.augment
    mixup = None
    if a.mixup > 0 or a.cutmix > 0:
        if cfg.train.batch_size % 2:
            raise ConfigError("Mixup/CutMix needs an even train.batch_size (or augment.mixup=0 augment.cutmix=0)")
        mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.label_smoothing,
                      num_classes=num_classes)
        criterion = SoftTargetCrossEntropy()
    elif a.label_smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=a.label_smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    def finetune_loss(model, batch, generator: torch.Generator):
        device = next(model.parameters()).device
        images, labels = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
        if mixup is not None:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            np.random.seed(seed)  # timm's Mixup draws from numpy and random
            random.seed(seed)
            images, labels = mixup(images, labels)
        return criterion(model(images), labels), {}

    return finetune_loss


def run_finetune(cfg: FinetuneConfig) -> TrainResult:
    """Fine-tune on one process or, under torchrun, with DDP (sharded training and evaluation data)."""
    from ..data import build_pretrain_loader
    from ..training.distributed import cleanup, setup_distributed
    from ..training.compile import should_compile
    from ..training.parallel import prepare_model, set_fused_attention
    from ..training.precision import use_fused_attention
    from ..training.threads import apply_thread_plan

    if cfg.train.strategy != "ddp":
        raise ConfigError("fine-tuning supports train.strategy=ddp (with train.activation_checkpointing=true for "
                          "large models); fsdp is available for pretrain")
    device, rank, world_size = setup_distributed(resolve_device(cfg.train.device))
    precision = resolve_precision(cfg.train.precision, device)
    threads = apply_thread_plan(cfg.data.num_workers)
    data_cfg = dataclasses.replace(cfg.data, num_workers=threads.workers)
    torch.manual_seed(cfg.train.seed)
    train_tf, eval_tf = build_transforms(cfg)
    loader = build_pretrain_loader(data_cfg, cfg.train.batch_size, cfg.train.seed, rank, world_size,
                                   transform=train_tf)
    data_classes = num_classes_of(loader.raw_dataset)
    num_classes = cfg.model.num_classes or data_classes
    if num_classes != data_classes:
        raise ConfigError(f"model.num_classes={num_classes} but the data has {data_classes} classes")
    val_dataset, val_loader = build_eval_loader(data_cfg, cfg.val_split, eval_tf, cfg.train.batch_size, rank,
                                                world_size)
    if num_classes_of(val_dataset) != num_classes:
        raise ConfigError(f"the {cfg.val_split} split has {num_classes_of(val_dataset)} classes, training "
                          f"has {num_classes}")
    model, encoder_cfg = build_classifier(cfg.model, num_classes, cfg.data.img_size)
    model = model.to(device)
    set_fused_attention(model, use_fused_attention("auto", device, precision))  # pre-training's kernel rule
    hooks = FinetuneHooks(model, val_loader, device, precision, cfg.train.ema_decay)
    groups = layer_decay_groups(model, cfg.optim)
    cfg.train.compile = should_compile(cfg.train.compile, cfg.train.epochs * (len(loader) // cfg.train.accum_steps))
    model, forward_model = prepare_model(model, device, "ddp", cfg.train.activation_checkpointing, cfg.train.compile)
    output_dir = Path(cfg.train.output_dir)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(dump_yaml(cfg))
        say(f"deepmim finetune: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {num_classes} "
            f"classes, {len(loader.dataset)} train / {len(val_dataset)} {cfg.val_split} images, device {device}, "
            f"precision {precision}, {world_size} process(es)\n{threads.describe()}; torch.compile "
            f"{'on' if cfg.train.compile else 'off'}\n--- resolved config ---\n{dump_yaml(cfg)}"
            f"-----------------------")
    config_dict = {**to_dict(cfg), "architecture": {"encoder": dataclasses.asdict(encoder_cfg),
                                                    "num_classes": num_classes}}
    trainer = Trainer(model, loader, make_loss(cfg, num_classes), cfg.train, cfg.optim, config_dict, device,
                      precision, rank, world_size, batch_size_of=lambda b: b.images.shape[0],
                      forward_model=forward_model, param_groups=groups, hooks=hooks)
    try:
        return trainer.fit()
    finally:
        cleanup()


def load_classifier(path: str | Path) -> Tuple[nn.Module, FinetuneConfig]:
    """A fine-tuned checkpoint -> (classifier with its weights, the config it was trained with)."""
    from ..config.loader import from_dict
    from ..models.loading import CheckpointError, read_state_file

    obj = read_state_file(path)
    saved = dict(obj.get("config") or {})
    arch = saved.pop("architecture", None)
    if arch is None:
        raise CheckpointError(f"'{path}' is not a deepmim fine-tuning checkpoint (no architecture in its config)")
    cfg = from_dict(FinetuneConfig, saved)
    enc = from_dict(EncoderConfig, arch["encoder"])
    model = vit_classifier(enc, arch["num_classes"], cfg.data.img_size, cfg.model.global_pool)
    model.load_state_dict(obj["model"])
    return model.eval(), cfg


def run_evaluate(path: str, overrides=()) -> Dict[str, float]:
    """top-1/top-5/loss of a fine-tuned checkpoint on its validation split (or data.* overrides)."""
    from ..config.loader import deep_merge, from_dict, parse_overrides

    model, cfg = load_classifier(path)
    if overrides:
        cfg = from_dict(FinetuneConfig, deep_merge(to_dict(cfg), parse_overrides(overrides)))
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    _, eval_tf = build_transforms(cfg)
    dataset, loader = build_eval_loader(cfg.data, cfg.val_split, eval_tf, cfg.train.batch_size)
    if num_classes_of(dataset) != model.num_classes:
        raise ConfigError(f"the checkpoint has {model.num_classes} classes, the {cfg.val_split} split "
                          f"{num_classes_of(dataset)}")
    return evaluate(model.to(device), loader, device, precision)
