"""`deepmim segment train` and `deepmim segment eval`: UperNet on a pre-trained ViT (ADE20K protocol).

Training is iteration-based, as in mmseg: `train.iterations` optimizer steps over an endless
stream of shuffled passes through the data. The shared Trainer counts epochs, so one Trainer
"epoch" here is one evaluation interval of `train.eval_every` iterations (`train.epochs` is
derived, never set): the validation set is scored after each, checkpoints are written there,
and resume is exact because every crop is seeded by its position in the stream.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.segmentation_metrics import confusion_matrix, per_class_table, segmentation_scores
from ..config.loader import ConfigError, deep_merge, from_dict, load_config, parse_overrides, to_dict
from ..config.schema import (
    EncoderConfig,
    SegDataConfig,
    SegEvalConfig,
    SegmentConfig,
    SegmentOptimConfig,
    SegmentTrainConfig,
    SegModelConfig,
)
from ..data.segmentation import SegTransform, build_iteration_loader, build_seg_dataset, colourise
from ..models.loading import pretrained_encoder
from ..models.segmentation import UperNetViT, default_out_indices
from ..training.distributed import all_reduce_sum, is_distributed, shard_indices
from ..training.env import Env
from ..training.jsonfile import write_json
from ..training.loop import TrainHooks, TrainResult
from ..training.optim import layer_decay_groups
from ..training.precision import autocast
from .base import TrainingTask, check_config, load_trained, run_training, session
from .summary import count_parameters, run_summary

__all__ = [
    "SegDataConfig",
    "SegEvalConfig",
    "SegModelConfig",
    "SegmentConfig",
    "SegmentOptimConfig",
    "SegmentTrainConfig",
    "SegmentHooks",
    "SegmentTask",
    "build_segmentor",
    "evaluate_segmentation",
    "format_scores",
    "layer_decay_groups",
    "load_segment_config",
    "load_segmentor",
    "make_seg_loss",
    "predict_probs",
    "run_segment_eval",
    "run_segment_train",
    "slide_logits",
    "validate_segment_config",
]


def load_segment_config(recipe: Optional[str], overrides=()) -> SegmentConfig:
    """Recipe + overrides -> a SegmentConfig, checked at once (so --print-config refuses a bad recipe;
    run_segment_train checks again, for configs built in Python)."""
    cfg = load_config(SegmentConfig, recipe, overrides, task="segment")
    check_config(SegmentTask(cfg), require_paths=False)
    return cfg


def validate_segment_config(cfg: SegmentConfig) -> None:
    t, o, e = cfg.train, cfg.optim, cfg.eval
    if t.epochs or o.warmup_epochs:
        raise ConfigError(
            "segmentation counts iterations: set train.iterations, train.eval_every and "
            "optim.warmup_iters, not train.epochs or optim.warmup_epochs"
        )
    if t.iterations < 1 or t.eval_every < 1 or t.iterations % t.eval_every:
        raise ConfigError(
            f"train.iterations ({t.iterations}) must be a positive multiple of train.eval_every ({t.eval_every})"
        )
    if t.batch_size < 2:
        raise ConfigError(
            "train.batch_size must be at least 2 per process: BatchNorm in the head needs two "
            "samples for its 1x1 pooled branch"
        )
    if e.mode not in ("slide", "whole"):
        raise ConfigError(f"eval.mode must be slide or whole, got {e.mode!r}")
    if o.schedule not in ("poly", "cosine"):
        raise ConfigError(f"optim.schedule must be poly or cosine, got {o.schedule!r}")


# ----------------------------------------------------------------------------- the model


def build_segmentor(
    cfg: SegModelConfig, num_classes: int, crop_size: int, enc: Optional[EncoderConfig] = None
) -> Tuple[nn.Module, EncoderConfig]:
    """UperNet on the encoder named by cfg (pre-trained weights loaded, position embedding
    resampled to the crop); `enc` given: that architecture, random weights (loading a checkpoint)."""
    state = None
    if enc is None:
        enc, state = pretrained_encoder(cfg.checkpoint, cfg.preset)
    out_indices = cfg.out_indices or default_out_indices(enc.depth)
    model = UperNetViT(
        enc,
        num_classes,
        crop_size,
        out_indices,
        cfg.channels,
        cfg.aux_channels,
        tuple(cfg.pool_scales),
        cfg.drop_path,
        cfg.rel_pos_bias,
        cfg.layer_scale,
        dropout=cfg.dropout,
    )
    if state is not None:
        model.backbone.load_encoder_state(state)
    return model, enc


def make_seg_loss(aux_weight: float, ignore_index: int):
    """Cross-entropy of the UperHead (+ aux_weight x the FCN head), logits upsampled to the labels."""

    def seg_loss(model, batch, generator: torch.Generator):
        device = next(model.parameters()).device
        images = batch.images.to(device, non_blocking=True)
        labels = batch.labels.to(device, non_blocking=True)
        main, aux = model(images, train_outputs=True)
        size = labels.shape[-2:]
        loss_main = F.cross_entropy(
            F.interpolate(main.float(), size, mode="bilinear", align_corners=False), labels, ignore_index=ignore_index
        )
        metrics = {"loss_main": loss_main.detach()}
        loss = loss_main
        if aux is not None and aux_weight:
            loss_aux = F.cross_entropy(
                F.interpolate(aux.float(), size, mode="bilinear", align_corners=False),
                labels,
                ignore_index=ignore_index,
            )
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
def predict_probs(
    model: nn.Module, image: torch.Tensor, cfg: SegEvalConfig, crop: int, num_classes: int
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
def evaluate_segmentation(
    model: nn.Module,
    dataset,
    cfg: SegmentConfig,
    device: torch.device,
    precision: str,
    rank: int = 0,
    world_size: int = 1,
) -> Dict[str, Any]:
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
        self.scores = evaluate_segmentation(
            self.model, self.val_dataset, self.cfg, self.device, self.precision, self.rank, self.world_size
        )
        self.best_miou = max(self.best_miou, self.scores["mIoU"])
        return {
            "iteration": float(trainer.step),
            "mIoU": self.scores["mIoU"],
            "mAcc": self.scores["mAcc"],
            "aAcc": self.scores["aAcc"],
            "best_mIoU": self.best_miou,
        }

    def state_dict(self) -> Dict[str, Any]:
        return {"best_miou": self.best_miou}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best_miou = state.get("best_miou", -1.0)


# ----------------------------------------------------------------------------- the tasks


def class_names(dataset, num_classes: int) -> List[str]:
    names = getattr(dataset, "classes", None)
    return list(names) if names and len(names) == num_classes else [str(i) for i in range(num_classes)]


class SegmentTask(TrainingTask):
    """The skeleton's steps for segmentation: the endless crop stream, UperNet on the pre-trained
    encoder (SyncBN over GPUs), layer-decay groups, scoring every train.eval_every iterations."""

    kind, title = "segment", "segmentation"

    def validate(self, require_paths: bool = True) -> None:
        validate_segment_config(self.cfg)

    def build_data(self, env: Env):
        cfg, t = self.cfg, self.cfg.train
        loader = build_iteration_loader(
            env.data(cfg.data), t.batch_size, t.eval_every * t.accum_steps, t.seed, env.rank, env.world_size
        )
        self.train_set = loader.dataset.dataset
        self.val_set = build_seg_dataset(cfg.data, cfg.data.val_split)
        self.num_classes = cfg.model.num_classes or len(self.train_set.classes)
        if self.num_classes != len(self.train_set.classes):
            raise ConfigError(
                f"model.num_classes={self.num_classes} but the data has {len(self.train_set.classes)} classes"
            )
        return loader

    def build_model(self, env: Env) -> nn.Module:
        model, self.enc = build_segmentor(self.cfg.model, self.num_classes, self.cfg.data.crop_size)
        if env.world_size > 1 and env.device.type == "cuda":  # SyncBatchNorm has no CPU kernel
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # 2 images per GPU: BN over all of them
        return model.to(env.device)

    def hooks(self, model: nn.Module, env: Env) -> SegmentHooks:
        self.scoring = SegmentHooks(model, self.val_set, self.cfg, env.device, env.precision, env.rank, env.world_size)
        return self.scoring

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        return layer_decay_groups(model, self.cfg.optim)

    def find_unused_parameters(self, model: nn.Module) -> bool:
        return model.backbone.out_indices[-1] < self.enc.depth - 1

    def train_config(self):
        """The Trainer counts epochs: one is an interval of train.eval_every iterations."""
        t = self.cfg.train
        return dataclasses.replace(t, epochs=t.iterations // t.eval_every)

    def optim_config(self):
        o = self.cfg.optim
        return dataclasses.replace(o, warmup_epochs=o.warmup_iters / self.cfg.train.eval_every)

    def loss(self):
        return make_seg_loss(self.cfg.model.aux_weight, self.cfg.data.ignore_index)

    def architecture(self) -> Dict[str, Any]:
        return {
            "encoder": dataclasses.asdict(self.enc),
            "num_classes": self.num_classes,
            "classes": class_names(self.train_set, self.num_classes),
        }

    def describe(self, model: nn.Module, loader, env: Env) -> str:
        t = self.cfg.train
        model_line = (
            f"UperNet on a ViT, {self.num_classes} classes, {t.iterations} iterations (validation every "
            f"{t.eval_every}); {count_parameters(model)}"
        )
        data_line = (
            f"{self.cfg.data.name}: {len(self.train_set)} train / {len(self.val_set)} val images, "
            f"crop {self.cfg.data.crop_size}"
        )
        return run_summary(
            "deepmim segment",
            model_line,
            data_line,
            self.cfg,
            loader,
            env,
            train=self.train_config(),
            optim=self.optim_config(),
            iterations=True,
        )

    def finish(self, result: TrainResult, model: nn.Module, env: Env) -> Tuple[TrainResult, Dict[str, Any]]:
        scores = self.scoring.scores
        scores = {**scores, "classes": class_names(self.train_set, self.num_classes)} if scores else {}
        if env.is_main and scores:
            out = Path(self.cfg.train.output_dir) / "eval.json"
            write_json(out, {"iteration": result.step, **scores})
        return result, scores


def run_segment_train(cfg: SegmentConfig) -> Tuple[TrainResult, Dict[str, Any]]:
    """Train, scoring the validation set every train.eval_every iterations; returns the Trainer's
    result and the last scores with the class names (also written to output_dir/eval.json by rank 0)."""
    return run_training(SegmentTask(cfg))


def load_segmentor(path: str | Path) -> Tuple[nn.Module, SegmentConfig, List[str]]:
    """A `deepmim segment train` checkpoint -> (model with its weights, its config, class names)."""
    model, cfg, arch = load_trained(path, "segment", "segment eval scores segmentation models")
    return model, cfg, arch.get("classes") or [str(i) for i in range(arch["num_classes"])]


def trained_segmentor(cfg: SegmentConfig, arch: Dict[str, Any]) -> nn.Module:
    """The model a segmentation checkpoint holds, before its weights load (the record of its kind names this)."""
    return build_segmentor(
        cfg.model, arch["num_classes"], cfg.data.crop_size, enc=from_dict(EncoderConfig, arch["encoder"])
    )[0]


def run_segment_eval(path: str, overrides=()) -> Tuple[Dict[str, Any], List[str]]:
    """Scores of a checkpoint on its validation split (or data.* / eval.* overrides); under torchrun
    each process scores its shard and all return the summed scores. The scores' "data" names the
    dataset, whether the checkpoint records it or data.* overrides changed it, the split and the images."""
    from .scored_data import check_available, data_record

    model, cfg, names = load_segmentor(path)
    data_keys = [o for o in overrides if o.startswith("data.")]
    source = "given" if data_keys else f"recorded in {path}"
    if overrides:
        cfg = from_dict(SegmentConfig, deep_merge(to_dict(cfg), parse_overrides(overrides)))
        validate_segment_config(cfg)
    check_available(
        cfg.data, "the data given to deepmim segment eval" if data_keys else f"the data {path} was trained on"
    )
    with session(cfg.train.device, cfg.train.precision) as env:
        dataset = build_seg_dataset(cfg.data, cfg.data.val_split)
        if len(dataset.classes) != model.num_classes:
            raise ConfigError(
                f"the checkpoint has {model.num_classes} classes, the {cfg.data.val_split} split {len(dataset.classes)}"
            )
        scores = evaluate_segmentation(
            model.to(env.device), dataset, cfg, env.device, env.precision, env.rank, env.world_size
        )
    scores["data"] = data_record(cfg.data, source, {cfg.data.val_split: len(dataset)})
    return scores, names


def format_scores(scores: Dict[str, Any], names: List[str]) -> str:
    return per_class_table(scores, names)
