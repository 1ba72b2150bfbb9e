"""`deepmim finetune` and `deepmim evaluate`: the MAE/BEiT fine-tuning recipe on a pre-trained encoder.

The classifier is timm's VisionTransformer (global average pooling with a new norm, head
initialised with std 2e-5, drop path), built from our encoder's weights by models/classifier.py;
layer-wise lr decay, RandAugment, random erasing, Mixup/CutMix, soft-target cross-entropy and EMA
all come from timm.
Training runs in the shared loop, so AMP, accumulation, exact resume and logging are the same.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..config.loader import ConfigError, deep_merge, from_dict, load_config, parse_overrides, to_dict
from ..config.schema import (
    AugmentConfig,
    ClassifierConfig,
    DataConfig,
    EncoderConfig,
    FinetuneConfig,
    FinetuneOptimConfig,
    FinetuneTrainConfig,
)
from ..data import TransformedDataset, build_dataset, build_pretrain_loader, collate_skip_broken, validate_data_config
from ..models.classifier import build_classifier
from ..training.distributed import all_reduce_sum, resolve_device, shard_indices
from ..training.env import Env
from ..training.loop import TrainHooks, TrainResult
from ..training.optim import layer_decay_groups
from ..training.parallel import set_fused_attention
from ..training.precision import autocast, resolve_precision, use_fused_attention
from .base import TrainingTask, check_config, load_trained, run_training
from .summary import count_parameters, describe_data, resize_note, run_summary

__all__ = [
    "AugmentConfig",
    "ClassifierConfig",
    "DataConfig",
    "FinetuneConfig",
    "FinetuneOptimConfig",
    "FinetuneTrainConfig",
    "FinetuneHooks",
    "FinetuneTask",
    "build_eval_loader",
    "build_transforms",
    "evaluate",
    "layer_decay_groups",
    "load_classifier",
    "load_finetune_config",
    "make_loss",
    "run_evaluate",
    "evaluate_checkpoint",
    "run_finetune",
]


def load_finetune_config(recipe: Optional[str], overrides=()) -> FinetuneConfig:
    cfg = load_config(FinetuneConfig, recipe, overrides, task="finetune")
    check_config(FinetuneTask(cfg), require_paths=False)  # --print-config refuses the values a run would
    return cfg


# ----------------------------------------------------------------------------- the classifier


def check_channels(enc: EncoderConfig, data: DataConfig) -> None:
    """The data's normalisation (one value per channel) must fit the encoder's input channels."""
    if len(data.mean) != enc.in_chans or len(data.std) != enc.in_chans:
        raise ConfigError(
            f"the pre-trained encoder takes {enc.in_chans} input channel(s) but data.mean has "
            f"{len(data.mean)} values: set data.mean and data.std to {enc.in_chans} value(s) each"
        )


# ----------------------------------------------------------------------------- data


def num_classes_of(dataset) -> int:
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise ConfigError("cannot tell the number of classes of this dataset; set model.num_classes")
    return len(classes)


def check_several_classes(dataset, data: DataConfig) -> None:
    """A classifier of one class is right on every image (top-1 100%) and learns nothing: refuse it."""
    classes = getattr(dataset, "classes", None) or []
    if len(classes) < 2:
        names = f" ({', '.join(map(str, classes))})" if classes else ""
        raise ConfigError(
            f"the training data has {len(classes)} class{names}: a classifier of one class scores "
            f"100% top-1 on anything and learns nothing. Give data.path ('{data.path}') at least two "
            f"class folders (root/train/<class>/*.jpg)"
        )


def check_auto_augment(spec: str) -> None:
    """Build the policy once, so a mistyped augment.auto_augment is named as such, not timm's bare AssertionError
    from inside the first loader worker."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    build = (
        rand_augment_transform
        if spec.startswith("rand")
        else augment_and_mix_transform
        if spec.startswith("augmix")
        else auto_augment_transform
    )
    try:
        build(spec, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except (AssertionError, ValueError, KeyError, IndexError) as error:
        detail = f" ({error})" if str(error) else ""
        raise ConfigError(
            f"augment.auto_augment={spec!r} is not a timm augmentation spec{detail}: use e.g. "
            f"rand-m9-mstd0.5-inc1 (RandAugment, the MAE recipe), augmix-m5-w4-d2, v0 or original "
            f"(AutoAugment), or none"
        ) from None


def build_transforms(cfg: FinetuneConfig):
    """timm's training transform (RandomResizedCrop, flip, RandAugment, random erasing) and its
    evaluation transform, applied to our uint8 tensors through PIL."""
    from timm.data import create_transform
    from torchvision.transforms import v2

    from ..data.compat import patch_timm_posterize

    patch_timm_posterize()
    d, a = cfg.data, cfg.augment
    auto_augment = None if str(a.auto_augment).lower() in ("none", "off", "false", "") else a.auto_augment
    if auto_augment is not None:
        check_auto_augment(auto_augment)
    train = create_transform(
        d.img_size,
        is_training=True,
        scale=(a.crop_scale_min, 1.0),
        hflip=0.5 if d.hflip else 0.0,
        color_jitter=a.color_jitter,
        auto_augment=auto_augment,
        interpolation="bicubic",
        re_prob=a.reprob,
        re_mode="pixel",
        re_count=1,
        mean=tuple(d.mean),
        std=tuple(d.std),
    )
    evaluate = create_transform(
        d.img_size,
        is_training=False,
        interpolation="bicubic",
        crop_pct=a.eval_crop_pct,
        mean=tuple(d.mean),
        std=tuple(d.std),
    )
    mode = "L" if len(d.mean) == 1 else "RGB"  # one channel per value of data.mean: grey stays grey
    return OnPIL(train, mode, v2.ToPILImage()), OnPIL(evaluate, mode, v2.ToPILImage())


class OnPIL:
    """A PIL-image transform (`.transform`, e.g. timm's) applied to our uint8 (C, H, W) tensors, converted to
    PIL mode `mode` ("L" or "RGB") first."""

    def __init__(self, transform, mode: str, to_pil):
        self.transform, self.mode, self.to_pil = transform, mode, to_pil

    def __call__(self, image: torch.Tensor):
        return self.transform(self.to_pil(image).convert(self.mode))


def build_eval_loader(cfg: DataConfig, split: str, transform, batch_size: int, rank: int = 0, world_size: int = 1):
    """The split's loader; under torch.distributed each process gets a disjoint shard (no padding, so no
    image is counted twice once `evaluate` sums the counts)."""
    dataset = build_dataset(cfg, split)
    mapped = TransformedDataset(dataset, transform)
    if world_size > 1:
        mapped = torch.utils.data.Subset(mapped, shard_indices(len(mapped), rank, world_size))
    loader = torch.utils.data.DataLoader(
        mapped, batch_size=batch_size, shuffle=False, num_workers=cfg.num_workers, collate_fn=collate_skip_broken
    )
    return dataset, loader


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: str) -> Dict[str, float]:
    """top-1, top-5 (when there are 5+ classes) and cross-entropy over the whole loader; under
    torch.distributed the counts of every process's shard are summed (one all-reduce, at the end)."""
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
        counts += torch.stack(
            [
                (top[:, 0] == labels).sum().double(),
                (top == labels[:, None]).any(dim=1).sum().double(),
                nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
                torch.tensor(float(labels.numel()), dtype=torch.float64, device=device),
            ]
        )
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
    if a.mixup > 0 or a.cutmix > 0:  # an even train.batch_size: FinetuneTask.validate
        mixup = Mixup(
            mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.label_smoothing, num_classes=num_classes
        )
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

    finetune_loss.mixup, finetune_loss.criterion = mixup, criterion  # what the loss does, for inspection
    return finetune_loss


class FinetuneTask(TrainingTask):
    """The skeleton's steps for fine-tuning: timm's transforms on the seeded loader, the classifier from
    the pre-trained encoder, layer-decay groups, Mixup/CutMix loss, evaluation (and EMA) every epoch."""

    kind, title = "finetune", "fine-tuning"

    def validate(self, require_paths: bool = True) -> None:
        validate_data_config(self.cfg.data, require_path=require_paths)
        a = self.cfg.augment
        if (a.mixup > 0 or a.cutmix > 0) and self.cfg.train.batch_size % 2:
            raise ConfigError("Mixup/CutMix needs an even train.batch_size (or augment.mixup=0 augment.cutmix=0)")

    def build_data(self, env: Env):
        cfg = self.cfg
        train_tf, eval_tf = build_transforms(cfg)
        data = env.data(cfg.data)  # the thread plan's loader workers
        loader = build_pretrain_loader(
            data, cfg.train.batch_size, cfg.train.seed, env.rank, env.world_size, transform=train_tf
        )
        data_classes = num_classes_of(loader.raw_dataset)
        self.class_names = [str(c) for c in loader.raw_dataset.classes]  # label names for exports (timm, transformers)
        check_several_classes(loader.raw_dataset, cfg.data)
        self.num_classes = cfg.model.num_classes or data_classes
        if self.num_classes != data_classes:
            raise ConfigError(f"model.num_classes={self.num_classes} but the data has {data_classes} classes")
        self.val_dataset, self.val_loader = build_eval_loader(
            data, cfg.val_split, eval_tf, cfg.train.batch_size, env.rank, env.world_size
        )
        if num_classes_of(self.val_dataset) != self.num_classes:
            raise ConfigError(
                f"the {cfg.val_split} split has {num_classes_of(self.val_dataset)} classes, training "
                f"has {self.num_classes}"
            )
        return loader

    def build_model(self, env: Env) -> nn.Module:
        model, self.encoder_cfg = build_classifier(self.cfg.model, self.num_classes, self.cfg.data.img_size)
        check_channels(self.encoder_cfg, self.cfg.data)
        set_fused_attention(model, use_fused_attention("auto", env.device, env.precision))  # pre-training's rule
        return model.to(env.device)

    def hooks(self, model: nn.Module, env: Env) -> FinetuneHooks:
        return FinetuneHooks(model, self.val_loader, env.device, env.precision, self.cfg.train.ema_decay)

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        return layer_decay_groups(model, self.cfg.optim)

    def loss(self):
        return make_loss(self.cfg, self.num_classes)

    def architecture(self) -> Dict[str, Any]:
        return {
            "encoder": dataclasses.asdict(self.encoder_cfg),
            "num_classes": self.num_classes,
            "classes": getattr(self, "class_names", None),
        }

    def describe(self, model: nn.Module, loader, env: Env) -> str:
        cfg, enc = self.cfg, self.encoder_cfg
        start = cfg.model.checkpoint or f"random init ({cfg.model.preset})"
        model_line = (
            f"ViT classifier {enc.embed_dim} wide x {enc.depth} blocks, {cfg.data.img_size}px / patch "
            f"{enc.patch_size}, {enc.in_chans} channel(s), {self.num_classes} classes, from {start}; "
            f"{count_parameters(model)}"
        )
        data_line = (
            f"{describe_data(cfg.data, len(loader.dataset))}; {len(self.val_dataset)} {cfg.val_split} "
            f"images scored every epoch"
        )
        notes = [
            note for note in [resize_note(getattr(loader, "raw_dataset", loader.dataset), cfg.data.img_size)] if note
        ]
        return run_summary("deepmim finetune", model_line, data_line, cfg, loader, env, notes=notes)


def run_finetune(cfg: FinetuneConfig) -> TrainResult:
    """Fine-tune on one process or, under torchrun, with DDP (sharded training and evaluation data)."""
    return run_training(FinetuneTask(cfg))


def load_classifier(path: str | Path) -> Tuple[nn.Module, FinetuneConfig]:
    """A fine-tuned checkpoint -> (classifier with its weights, the config it was trained with)."""
    model, cfg, _ = load_trained(path, "finetune", "evaluate and export read fine-tuned classifiers")
    return model, cfg


def run_evaluate(path: str, overrides=()) -> Dict[str, float]:
    """top-1/top-5/loss of a fine-tuned checkpoint on its validation split (or data.* overrides)."""
    return evaluate_checkpoint(path, overrides)[0]


def evaluate_checkpoint(path: str, overrides=()) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """run_evaluate's scores and the data record (tasks/scored_data.py): the dataset, whether it is the one
    the checkpoint records or data.* overrides changed it, the split and the images scored."""
    from .scored_data import check_available, data_record

    model, cfg = load_classifier(path)
    data_keys = [o for o in overrides if o.startswith(("data.", "val_split="))]
    if overrides:
        cfg = from_dict(FinetuneConfig, deep_merge(to_dict(cfg), parse_overrides(overrides)))
    source = "given" if data_keys else f"recorded in {path}"
    check_available(
        cfg.data, "the data given to deepmim evaluate" if data_keys else f"the data {path} was fine-tuned on"
    )
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    _, eval_tf = build_transforms(cfg)
    dataset, loader = build_eval_loader(cfg.data, cfg.val_split, eval_tf, cfg.train.batch_size)
    if num_classes_of(dataset) != model.num_classes:
        raise ConfigError(
            f"the checkpoint has {model.num_classes} classes, the {cfg.val_split} split {num_classes_of(dataset)}"
        )
    metrics = evaluate(model.to(device), loader, device, precision)
    return metrics, data_record(cfg.data, source, {cfg.val_split: int(metrics["images"])})
