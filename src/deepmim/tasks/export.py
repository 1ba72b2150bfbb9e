"""`deepmim export`: the weights of a checkpoint with the preprocessing they were trained with, for every
kind deepmim writes, in the layouts timm and transformers load.

    pre-training (or bare weights)  the encoder in timm's VisionTransformer layout (models/export.py)
    fine-tuning                     the classifier as it is, a timm VisionTransformer with its head
    segmentation                    the UperNet model as it is (timm Beit backbone, neck, heads)
    linear-probe head               refused: a head alone is no model; export the encoder it probed
    another registered kind         its record's `export`, else its model's weights as they are

Which exporter a checkpoint gets is its kind's record (deepmim.checkpoint.TaskKind: `export`, `export_hf`).

Formats: `safetensors` (default) one file, the `timm.create_model(...)` call that loads it (architecture
and `pretrained_cfg_overlay` with mean/std/input size/crop) printed and kept in its metadata; `timm` a
folder (config.json with architecture, model_args, pretrained_cfg + model.safetensors) for
`timm.create_model("local-dir:OUT", pretrained=True)`; `hf` / `hf-encoder` Hugging Face folders with a
preprocessor_config.json (tasks/export_hf.py).

Weights without a deepmim config (MAE's, the authors', timm's) name their architecture with `preset`
(`--preset mae_vit_base`) and get ImageNet's mean/std (MAE's).

Classifier, segmentation and other trained-model exports carry their checkpoint's task, config and
architecture in the metadata (deepmim.checkpoint.checkpoint_metadata), so they read back as the
checkpoint they came from: `deepmim evaluate` and `deepmim segment eval` take them as they take the
.pt files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from ..checkpoint import Checkpoint, CheckpointError, checkpoint_metadata, read_checkpoint, save_weights, task_kinds
from ..config.loader import ConfigError
from ..config.schema import EncoderConfig
from ..models.export import (
    TIMM_LAYER_NORM_EPS,
    encoder_metadata,
    encoder_state_dict,
    export_encoder,
    preprocessing_of,
    timm_file_call,
    timm_folder_call,
    timm_folder_config,
    write_timm_folder,
)
from ..models.hf import is_hf_folder
from ..models.loading import load_encoder
from .base import load_trained, task_hook
from .finetune import load_classifier
from .segment import load_segmentor

FORMATS = ("safetensors", "timm", "hf", "hf-encoder")
logger = logging.getLogger(__name__)


def export_checkpoint(
    checkpoint: str, out: str, img_size: Optional[int] = None, preset: Optional[str] = None, fmt: str = "safetensors"
) -> str:
    """Write the weights of `checkpoint` to `out` (a .safetensors file, or a folder for the timm and hf formats);
    returns what was written and how to load it (the timm formats: the exact call, on a line of its own)."""
    from .export_hf import export_vit, export_vitmae

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    ckpt = read_checkpoint(checkpoint)
    kind = ckpt.task_kind  # None: bare weights
    if preset and ckpt.task is not None:
        raise ConfigError(
            f"--preset names the architecture of bare weights; {ckpt.name} is {ckpt.kind} and records its own"
        )
    if kind is None and ckpt.task is not None:
        raise CheckpointError(
            f"{ckpt.name} is {ckpt.kind}, a kind this installation of deepmim does not know "
            f"(it knows {', '.join(task_kinds())}); export it where the task that wrote it is "
            f"installed"
        )
    if fmt == "hf-encoder":
        return export_vit(ckpt, Path(out), img_size, preset)
    if fmt == "hf":
        export_hf = task_hook(kind.export_hf) if kind is not None else None
        if export_hf is not None:
            return export_hf(ckpt, Path(out), img_size)
        return export_vitmae(ckpt, Path(out), img_size, preset)
    if kind is None:
        return export_pretrained(ckpt, Path(out), img_size, preset, folder=fmt == "timm")
    exporter = task_hook(kind.export) or export_trained_model
    return exporter(ckpt, Path(out), img_size, preset, folder=fmt == "timm")


def export_pretrained(
    ckpt: Checkpoint, out: Path, img_size: Optional[int], preset: Optional[str] = None, folder: bool = False
) -> str:
    """The encoder alone (no decoders, no teacher file needed), position embedding resampled to img_size;
    `preset` names the architecture of bare weights. The file stays bare weights (no task): deepmim reads
    it back with a preset, as MAE's releases."""
    if ckpt.task is None and preset is None and not is_hf_folder(ckpt.path):
        raise CheckpointError(
            f"{ckpt.name} holds no deepmim config: name its architecture with --preset NAME "
            f"(e.g. --preset mae_vit_base; deepmim presets lists them)"
        )
    encoder = load_encoder(ckpt.path, preset)
    enc = encoder.cfg
    pre = preprocessing_of(ckpt.config, img_size or enc.img_size, enc.in_chans)
    logger.debug("export of %s: encoder %s, preprocessing %s", ckpt.name, enc, pre)
    if folder:
        call = timm_folder_call(out)
        config = timm_folder_config(enc, pre, 0, extra={"timm_call": call, "exported_from": str(ckpt.path)})
        write_timm_folder(
            encoder_state_dict(encoder, img_size),
            config,
            out,
            {**encoder_metadata(encoder, img_size), "timm_call": call},
        )
    else:
        call = timm_file_call(enc, out, pre, 0, img_size)
        export_encoder(encoder, out, img_size, {"timm_call": call, "preprocessing": json.dumps(pre.to_dict())})
    return (
        f"wrote {out} (the encoder at {pre.img_size}px, with its preprocessing){_eps_note(enc)}; load it with\n  {call}"
    )


def export_classifier(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset=None, folder: bool = False) -> str:
    """A fine-tuned checkpoint is a timm VisionTransformer already: its weights as they are, with the
    evaluation preprocessing of its run (data.mean/std, data.img_size, augment.eval_crop_pct, bicubic)."""
    _no_resampling(
        ckpt, img_size, "timm resamples a classifier's position embedding itself when created with another img_size"
    )
    model, cfg = load_classifier(ckpt.path)
    enc = EncoderConfig(**ckpt.architecture["encoder"])
    pre = preprocessing_of(ckpt.config, cfg.data.img_size, enc.in_chans)
    pool, classes = cfg.model.global_pool, ckpt.architecture.get("classes")
    logger.debug("export of %s: classifier %s, preprocessing %s", ckpt.name, enc, pre)
    meta = {
        "format": "pt",
        "num_classes": str(model.num_classes),
        "global_pool": pool,
        "img_size": str(cfg.data.img_size),
        **checkpoint_metadata(ckpt),
    }
    if folder:
        call = timm_folder_call(out)
        config = timm_folder_config(
            enc, pre, model.num_classes, pool, classes, extra={"timm_call": call, "exported_from": str(ckpt.path)}
        )
        write_timm_folder(model.state_dict(), config, out, {**meta, "timm_call": call})
    else:
        call = timm_file_call(enc, out, pre, model.num_classes, cfg.data.img_size, pool)
        save_weights(model.state_dict(), out, {**meta, "timm_call": call})
    return (
        f"wrote {out} ({model.num_classes} classes, with the evaluation preprocessing){_eps_note(enc)}; score it "
        f"with deepmim evaluate {out}, load it with\n  {call}"
    )


def export_segmentor(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset=None, folder: bool = False) -> str:
    """A segmentation checkpoint: the UperNet model's weights as they are, its config (data.mean / data.std
    included) in the metadata."""
    _no_resampling(ckpt, img_size, "a segmentation model keeps the crop size it was trained at")
    if folder:
        raise ConfigError(
            f"{ckpt.name} is {ckpt.kind}: timm has no UperNet model to load it into; write a "
            f"transformers UperNetForSemanticSegmentation folder with --format hf, or the weights "
            f"file with --format safetensors"
        )
    model, cfg, _ = load_segmentor(ckpt.path)
    meta = {
        "format": "pt",
        "num_classes": str(model.num_classes),
        "crop_size": str(cfg.data.crop_size),
        **checkpoint_metadata(ckpt),
    }
    save_weights(model.state_dict(), out, meta)
    return (
        f"wrote {out}: the UperNet weights (timm Beit backbone, neck, heads) with the config they were "
        f"trained with; score them: deepmim segment eval {out}"
    )


def export_trained_model(
    ckpt: Checkpoint, out: Path, img_size: Optional[int], preset=None, folder: bool = False
) -> str:
    """A checkpoint of a kind without an exporter of its own: the model its record rebuilds, weights as they are,
    the checkpoint's task, config and architecture in the metadata (it reads back as that checkpoint)."""
    _no_resampling(ckpt, img_size, "the model keeps the size it was trained at")
    if folder:
        raise ConfigError(
            f"{ckpt.name} is {ckpt.kind}: timm has no model to load it into; write the weights file "
            f"with --format safetensors"
        )
    model, _, _ = load_trained(ckpt, ckpt.task)
    save_weights(model.state_dict(), out, {"format": "pt", **checkpoint_metadata(ckpt)})
    return f"wrote {out}: the weights of {ckpt.kind}, with the config they were trained with"


def refuse_probe_head(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset=None, folder: bool = False) -> str:
    raise CheckpointError(
        f"{ckpt.name} is {ckpt.kind}: export writes models, and a probe head alone is "
        f"none. Export the checkpoint it probed (linprobe.json names it) instead"
    )


def _eps_note(enc: EncoderConfig) -> str:
    if enc.norm_eps == TIMM_LAYER_NORM_EPS:
        return ""
    return (
        f" (note: timm's ViT builds its LayerNorms with eps {TIMM_LAYER_NORM_EPS}, this model was trained with "
        f"{enc.norm_eps}: outputs differ by that epsilon's effect)"
    )


def _no_resampling(ckpt: Checkpoint, img_size: Optional[int], why: str) -> None:
    if img_size:
        raise ConfigError(f"--img-size applies to pre-trained encoders; {ckpt.name} is {ckpt.kind}: {why}")
