"""`deepmim segment train` and `deepmim segment eval`: UperNet on a pre-trained ViT (ADE20K protocol).

Training is iteration-based, as in mmseg: `train.iterations` optimizer steps over an endless
stream of shuffled passes through the data. The shared Trainer counts epochs, so one Trainer
"epoch" here is one evaluation interval of `train.eval_every` iterations (`train.epochs` is
derived, never set): the validation set is scored after each, checkpoints are written there,
and resume is exact because every crop is seeded by its position in the stream.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.segmentation_metrics import confusion_matrix, per_class_table, segmentation_scores
from ..config.loader import ConfigError, dump_yaml, load_config, to_dict
from ..config.schema import EncoderConfig, OptimConfig, TrainConfig
from ..data.segmentation import SegDataConfig, SegTransform, build_iteration_loader, build_seg_dataset, colourise
from ..training import TrainResult, Trainer, resolve_device, resolve_precision
from ..training.distributed import all_reduce_sum, is_distributed, setup_distributed, shard_indices
from ..training.parallel import prepare_model
from ..training.logging import say
from ..training.loop import TrainHooks
from ..training.compile import should_compile
from ..training.precision import autocast


@dataclass
class SegModelConfig:
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
    iterations: int = 160_000
    eval_every: int = 16_000  # iterations between validations (and numbered checkpoints)
    batch_size: int = 2  # per process: the authors ran 8 GPUs x 2
    epochs: int = 0  # derived: iterations / eval_every; do not set
    output_dir: str = "runs/segment"
    log_every_steps: int = 50
    plots: bool = False


@dataclass
class SegEvalConfig:
    mode: str = "slide"  # slide (windows of crop_size every stride pixels) | whole
    crop_size: Optional[int] = None  # None: data.crop_size
    stride: int = 341
    flip: bool = False  # average the softmax of the image and its mirror
    save_predictions: Optional[str] = None  # folder for image | prediction | label PNGs


@dataclass
class SegmentConfig:
    model: SegModelConfig = field(default_factory=SegModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    optim: SegmentOptimConfig = field(default_factory=SegmentOptimConfig)
    train: SegmentTrainConfig = field(default_factory=SegmentTrainConfig)
    eval: SegEvalConfig = field(default_factory=SegEvalConfig)


def load_segment_config(recipe: Optional[str], overrides=()) -> SegmentConfig:
    cfg = load_config(SegmentConfig, recipe, overrides, task="segment")
    validate_segment_config(cfg)
    return cfg


def validate_segment_config(cfg: SegmentConfig) -> None:
    t, o, e = cfg.train, cfg.optim, cfg.eval
    if t.epochs or o.warmup_epochs:
        raise ConfigError("segmentation counts iterations: set train.iterations, train.eval_every and "
                          "optim.warmup_iters, not train.epochs or optim.warmup_epochs")
    if t.iterations < 1 or t.eval_every < 1 or t.iterations % t.eval_every:
        raise ConfigError(f"train.iterations ({t.iterations}) must be a positive multiple of train.eval_every "
                          f"({t.eval_every})")
    if t.batch_size < 2:
        raise ConfigError("train.batch_size must be at least 2 per process: BatchNorm in the head needs two "
                          "samples for its 1x1 pooled branch")
    if e.mode not in ("slide", "whole"):
        raise ConfigError(f"eval.mode must be slide or whole, got {e.mode!r}")
    if o.schedule not in ("poly", "cosine"):
        raise ConfigError(f"optim.schedule must be poly or cosine, got {o.schedule!r}")


# ----------------------------------------------------------------------------- the model


def build_segmentor(cfg: SegModelConfig, num_classes: int, crop_size: int,
                    enc: Optional[EncoderConfig] = None) -> Tuple[nn.Module, EncoderConfig]:
    """UperNet on the encoder named by cfg (pre-trained weights loaded, position embedding
    resampled to the crop); `enc` given: that architecture, random weights (loading a checkpoint)."""
    from ..models.segmentation import UperNetViT, default_out_indices
    from .finetune import encoder_config_for

    state = None
    if enc is None:
        enc, state = encoder_config_for(cfg)
    out_indices = cfg.out_indices or default_out_indices(enc.depth)
    model = UperNetViT(enc, num_classes, crop_size, out_indices, cfg.channels, cfg.aux_channels,
                       tuple(cfg.pool_scales), cfg.drop_path, cfg.rel_pos_bias, cfg.layer_scale, dropout=cfg.dropout)
    if state is not None:
        model.backbone.load_encoder_state(state)
    return model, enc


def layer_decay_groups(model: nn.Module, optim: SegmentOptimConfig) -> List[Dict[str, Any]]:
    from timm.optim import param_groups_layer_decay

    return param_groups_layer_decay(model, weight_decay=optim.weight_decay, layer_decay=optim.layer_decay,
                                    no_weight_decay_list=model.no_weight_decay())


def make_seg_loss(aux_weight: float, ignore_index: int):
    """Cross-entropy of the UperHead (+ aux_weight x the FCN head), logits upsampled to the labels."""

    def seg_loss(model, batch, generator: torch.Generator):
        device = next(model.parameters()).device
        images = batch.images.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        main, aux = model(images, train_outputs=True)
        size = labels.shape[-2:]
        loss_main = F.cross_entropy(F.interpolate(main.float(), size, mode="bilinear", align_corners=False), labels,
                                    ignore_index=ignore_index)
        metrics = {"loss_main": loss_main.detach()}
        loss = loss_main
        if aux is not None and aux_weight:
            loss_aux = F.cross_entropy(F.interpolate(aux.float(), size, mode="bilinear", align_corners=False),
                                       labels, ignore_index=ignore_index)
            loss = loss + aux_weight * loss_aux
            metrics["loss_aux"] = loss_aux.detach()
        return loss, metrics

    return seg_loss


# ----------------------------------------------------------------------------- inference


def slide_logits(model: nn.Module, image: torch.Tensor, num_classes: int, crop: int, stride: int) -> torch.Tensor:
    """mmseg's sliding window: crops of `crop` every `stride` pixels (the last one flush with the
    border), logits averaged where windows overlap. A window smaller than the crop (small images)
    is zero-padded to the crop, the size the backbone was trained at."""
    n, _, h, w = image.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    logits = image.new_zeros((n, num_classes, h, w))
    count = image.new_zeros((1, 1, h, w))
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            window = image[..., y1:y2, x1:x2]
            wh, ww = window.shape[-2:]
            if wh < crop or ww < crop:
                window = F.pad(window, (0, crop - ww, 0, crop - wh))
            logits[..., y1:y2, x1:x2] += model(window)[..., :wh, :ww].float()
            count[..., y1:y2, x1:x2] += 1
    return logits / count


@torch.no_grad()
def predict_probs(model: nn.Module, image: torch.Tensor, cfg: SegEvalConfig, crop: int, num_classes: int
                  ) -> torch.Tensor:
    """Class probabilities (N, C, H, W) of normalised images: whole or sliding, optionally
    averaged with the mirrored prediction."""

    def infer(x):
        logits = slide_logits(model, x, num_classes, crop, cfg.stride) if cfg.mode == "slide" else model(x).float()
        return logits.softmax(dim=1)

    probs = infer(image)
    if cfg.flip:
        probs = (probs + infer(image.flip(-1)).flip(-1)) / 2
    return probs


class EvalItems(torch.utils.data.Dataset):
    """(normalised image at the base scale, label at its own size, name, raw image) by index."""

    def __init__(self, dataset, transform: SegTransform, indices: List[int]):
        self.dataset, self.transform, self.indices = dataset, transform, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        sample = self.dataset[self.indices[i]]
        image, label = self.transform(sample.image, sample.label)
        return image, label, sample.name, sample.image


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset, cfg: SegmentConfig, device: torch.device, precision: str,
                          rank: int = 0, world_size: int = 1) -> Dict[str, Any]:
    """Scores of `model` on `dataset`: each process predicts its shard, the confusion matrices
    are summed over processes, so every rank returns the same numbers."""
    num_classes = model.num_classes
    crop = cfg.eval.crop_size or cfg.data.crop_size
    items = EvalItems(dataset, SegTransform(cfg.data, train=False), shard_indices(len(dataset), rank, world_size))
    loader = torch.utils.data.DataLoader(items, batch_size=None, num_workers=cfg.data.num_workers)
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for image, label, name, raw in loader:
        with autocast(device, precision):
            probs = predict_probs(model, image[None].to(device), cfg.eval, crop, num_classes)
        probs = F.interpolate(probs.float(), label.shape, mode="bilinear", align_corners=False)
        pred = probs.argmax(dim=1)[0]
        conf += confusion_matrix(pred, label.to(device), num_classes, cfg.data.ignore_index)
        if cfg.eval.save_predictions:
            save_prediction(Path(cfg.eval.save_predictions), name, raw, pred.cpu(), label)
    model.train(was_training)
    return segmentation_scores(all_reduce_sum(conf))


def save_prediction(folder: Path, name: str, raw: torch.Tensor, pred: torch.Tensor, label: torch.Tensor) -> None:
    """`<name>.png`: the input, the colourised prediction and the colourised label side by side.
    Each process writes the images of its own shard (distinct names)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    panel = np.concatenate([raw.permute(1, 2, 0).numpy(), colourise(pred.numpy()), colourise(label.numpy())], axis=1)
    Image.fromarray(panel).save(folder / f"{name}.png")


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's BatchNorm statistics to every process (what DDP does before each forward): after the
    last step each rank holds its own, and evaluation must use the checkpointed ones."""
    if is_distributed():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


class SegmentHooks(TrainHooks):
    """Score the validation set after every interval of train.eval_every iterations."""

    def __init__(self, model: nn.Module, val_dataset, cfg: SegmentConfig, device, precision, rank, world_size):
        self.model, self.val_dataset, self.cfg = model, val_dataset, cfg
        self.device, self.precision, self.rank, self.world_size = device, precision, rank, world_size
        self.best_miou = -1.0
        self.scores: Dict[str, Any] = {}

    def after_epoch(self, trainer, epoch: int) -> Dict[str, float]:
        broadcast_buffers(self.model)
        self.scores = evaluate_segmentation(self.model, self.val_dataset, self.cfg, self.device, self.precision,
                                            self.rank, self.world_size)
        self.best_miou = max(self.best_miou, self.scores["mIoU"])
        return {"iteration": float(trainer.step), "mIoU": self.scores["mIoU"], "mAcc": self.scores["mAcc"],
                "aAcc": self.scores["aAcc"], "best_mIoU": self.best_miou}

    def state_dict(self) -> Dict[str, Any]:
        return {"best_miou": self.best_miou}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best_miou = state.get("best_miou", -1.0)


# ----------------------------------------------------------------------------- the tasks


def class_names(dataset, num_classes: int) -> List[str]:
    names = getattr(dataset, "classes", None)
    return list(names) if names and len(names) == num_classes else [str(i) for i in range(num_classes)]


def run_segment_train(cfg: SegmentConfig) -> Tuple[TrainResult, Dict[str, Any]]:
    """Train, scoring the validation set every train.eval_every iterations; returns the Trainer's
    result and the last scores with the class names (also written to output_dir/eval.json by rank 0)."""
    validate_segment_config(cfg)
    device = resolve_device(cfg.train.device)
    device, rank, world_size = setup_distributed(device)
    precision = resolve_precision(cfg.train.precision, device)
    torch.manual_seed(cfg.train.seed)
    t = cfg.train
    loader = build_iteration_loader(cfg.data, t.batch_size, t.eval_every * t.accum_steps, t.seed, rank, world_size)
    train_set = loader.dataset.dataset
    val_set = build_seg_dataset(cfg.data, cfg.data.val_split)
    num_classes = cfg.model.num_classes or len(train_set.classes)
    if num_classes != len(train_set.classes):
        raise ConfigError(f"model.num_classes={num_classes} but the data has {len(train_set.classes)} classes")
    model, enc = build_segmentor(cfg.model, num_classes, cfg.data.crop_size)
    if world_size > 1 and device.type == "cuda":  # SyncBatchNorm has no CPU kernel
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # 2 images per GPU: BN over all of them
    model = model.to(device)
    hooks = SegmentHooks(model, val_set, cfg, device, precision, rank, world_size)
    train_cfg = dataclasses.replace(t, epochs=t.iterations // t.eval_every)
    optim_cfg = dataclasses.replace(cfg.optim, warmup_epochs=cfg.optim.warmup_iters / t.eval_every)
    output_dir = Path(t.output_dir)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(dump_yaml(cfg))
        say(f"deepmim segment: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {num_classes} "
            f"classes, {len(train_set)} train / {len(val_set)} val images, {t.iterations} iterations of "
            f"{t.batch_size}x{world_size} crops, device {device}, precision {precision}")
    config_dict = {**to_dict(cfg), "architecture": {"encoder": dataclasses.asdict(enc), "num_classes": num_classes,
                                                    "classes": class_names(train_set, num_classes)}}
    if t.strategy != "ddp":
        raise ConfigError("segmentation supports train.strategy=ddp (with train.activation_checkpointing=true "
                          "for large backbones); fsdp is available for pretrain")
    groups = layer_decay_groups(model, cfg.optim)
    t.compile = should_compile(t.compile, t.iterations)
    model, forward_model = prepare_model(model, device, "ddp", t.activation_checkpointing, t.compile,
                                         find_unused_parameters=model.backbone.out_indices[-1] < enc.depth - 1)
    trainer = Trainer(model, loader, make_seg_loss(cfg.model.aux_weight, cfg.data.ignore_index), train_cfg,
                      optim_cfg, config_dict, device, precision, rank, world_size, lambda b: b.images.shape[0],
                      forward_model=forward_model, param_groups=groups, hooks=hooks)
    result = trainer.fit()
    scores = {**hooks.scores, "classes": config_dict["architecture"]["classes"]} if hooks.scores else {}
    if rank == 0 and scores:
        (output_dir / "eval.json").write_text(json.dumps({"iteration": result.step, **scores}, indent=2))
    return result, scores


def load_segmentor(path: str | Path) -> Tuple[nn.Module, SegmentConfig, List[str]]:
    """A `deepmim segment train` checkpoint -> (model with its weights, its config, class names)."""
    from ..config.loader import from_dict
    from ..models.loading import CheckpointError, read_state_file

    obj = read_state_file(path)
    saved = dict(obj.get("config") or {})
    arch = saved.pop("architecture", None)
    if arch is None or "data" not in saved or "eval" not in saved:
        raise CheckpointError(f"'{path}' is not a deepmim segmentation checkpoint (written by deepmim segment train)")
    cfg = from_dict(SegmentConfig, saved)
    enc = from_dict(EncoderConfig, arch["encoder"])
    model, _ = build_segmentor(cfg.model, arch["num_classes"], cfg.data.crop_size, enc=enc)
    model.load_state_dict(obj["model"])
    return model.eval(), cfg, arch.get("classes") or [str(i) for i in range(arch["num_classes"])]


def run_segment_eval(path: str, overrides=()) -> Tuple[Dict[str, Any], List[str]]:
    """Scores of a checkpoint on its validation split (or data.* / eval.* overrides)."""
    from ..config.loader import deep_merge, from_dict, parse_overrides

    model, cfg, names = load_segmentor(path)
    if overrides:
        cfg = from_dict(SegmentConfig, deep_merge(to_dict(cfg), parse_overrides(overrides)))
        validate_segment_config(cfg)
    device = resolve_device(cfg.train.device)
    device, rank, world_size = setup_distributed(device)
    precision = resolve_precision(cfg.train.precision, device)
    dataset = build_seg_dataset(cfg.data, cfg.data.val_split)
    if len(dataset.classes) != model.num_classes:
        raise ConfigError(f"the checkpoint has {model.num_classes} classes, the {cfg.data.val_split} split "
                          f"{len(dataset.classes)}")
    scores = evaluate_segmentation(model.to(device), dataset, cfg, device, precision, rank, world_size)
    return scores, names


def format_scores(scores: Dict[str, Any], names: List[str]) -> str:
    return per_class_table(scores, names)
