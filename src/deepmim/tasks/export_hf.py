"""`deepmim export --format hf | hf-encoder`: Hugging Face `transformers` folders (config.json +
model.safetensors, the key maps of models/hf.py, and preprocessor_config.json with the run's
preprocessing), written without importing transformers:

    hf          pre-training: an MAE-layout model (its head on the final-normed last block, pixel target) as
                transformers.ViTMAEForPreTraining.from_pretrained(out): same loss and predictions for the
                same images and `noise` (tested). A DeepMIM model gives its encoder and last decoder; the
                extra decoders are pre-training scaffolding and are left out (the message says so).
                fine-tuning: a cls-token classifier as transformers.ViTForImageClassification (an average-
                pooling one has no transformers counterpart: refused, with the reason).
                segmentation: see export_hf_segmentor.
    hf-encoder  the encoder alone as transformers.ViTModel.from_pretrained(out, add_pooling_layer=False)

`AutoImageProcessor.from_pretrained(out)` reads the preprocessor_config.json (a BitImageProcessor: resize
the short side, centre-crop, normalise with the run's mean/std), so `pipeline("image-feature-extraction")`
(hf-encoder) and `pipeline("image-classification")` run on the folders as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from ..checkpoint import Checkpoint, CheckpointError, save_weights
from ..config.loader import ConfigError
from ..config.schema import EncoderConfig
from ..models.deepmim import DeepMIM
from ..models.export import HF_PROCESSOR_CONFIG, Preprocessing, encoder_state_dict, preprocessing_of
from ..models.hf import (
    CONFIG_FILE,
    check_mae_layout,
    encoder_to_hf,
    upernet_config,
    upernet_state,
    vit_config,
    vitmae_config,
    vitmae_state,
)
from ..models.loading import load_encoder, load_weights, saved_model_config
from ..models.presets import preset_config

WEIGHTS_FILE = "model.safetensors"


def write_hf_folder(
    state: Dict[str, Any], config: Dict[str, Any], out: Path, preprocessing: Optional[Preprocessing] = None
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_weights(state, out / WEIGHTS_FILE, {"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if preprocessing is not None:
        (out / HF_PROCESSOR_CONFIG).write_text(json.dumps(preprocessing.hf_processor_config(), indent=2) + "\n")
    return out


def _pretrained(ckpt: Checkpoint, what: str) -> None:
    if ckpt.task not in ("pretrain", None):
        raise CheckpointError(f"{ckpt.name} is {ckpt.kind}: {what} is written from pre-trained weights")


def export_vitmae(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset: Optional[str]) -> str:
    _pretrained(ckpt, "a ViTMAEForPreTraining folder")
    if img_size:
        raise ConfigError(
            "--img-size is not offered for --format hf: ViTMAE's decoder keeps the grid it was trained "
            "on (transformers resizes at run time with interpolate_pos_encoding=True)"
        )
    cfg = preset_config(preset) if preset else saved_model_config(ckpt.path, ckpt)
    if cfg is None:
        raise CheckpointError(
            f"{ckpt.name} holds no deepmim config: name its architecture with --preset NAME "
            f"(e.g. --preset mae_vit_base; deepmim presets lists them)"
        )
    head = check_mae_layout(cfg)  # before building: a teacher target on another head needs no file here
    model = DeepMIM(cfg)
    load_weights(model, ckpt.raw if ckpt.path is None else ckpt.path)
    pre = preprocessing_of(ckpt.config, cfg.encoder.img_size, cfg.encoder.in_chans)
    write_hf_folder(vitmae_state(model), vitmae_config(cfg), out, pre)
    extra = [h.block for h in cfg.heads if h.block != head.block]
    left_out = f"; the decoders at blocks {', '.join(map(str, extra))} are left out (ViTMAE has one)" if extra else ""
    return (
        f"wrote {out} (ViTMAE: encoder + the decoder of block {head.block}{left_out}); load it with "
        f"transformers.ViTMAEForPreTraining.from_pretrained('{out}')"
    )


def export_vit(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset: Optional[str]) -> str:
    _pretrained(ckpt, "a ViTModel folder")
    encoder = load_encoder(ckpt.path, preset)
    enc = encoder.cfg
    size = img_size or enc.img_size
    state = encoder_to_hf(encoder_state_dict(encoder, img_size), enc.depth)
    config = vit_config(type(enc)(**{**enc.__dict__, "img_size": size}))
    write_hf_folder(state, config, out, preprocessing_of(ckpt.config, size, enc.in_chans))
    return (
        f"wrote {out} (the encoder at {size}px); load it with "
        f"transformers.ViTModel.from_pretrained('{out}', add_pooling_layer=False), its images with "
        f"transformers.AutoImageProcessor.from_pretrained('{out}')"
    )


def export_hf_classifier(ckpt: Checkpoint, out: Path, img_size: Optional[int]) -> str:
    """A fine-tuned classifier as transformers.ViTForImageClassification: that class reads the final-normed
    cls token, which is timm's global_pool='token'. With 'avg' (MAE's fine-tuning) timm averages the patch
    tokens before the norm and norms the mean with a separate fc_norm: no transformers ViT class computes
    that, so the export is refused rather than approximated."""
    from .finetune import load_classifier

    if img_size:
        raise ConfigError(f"--img-size applies to pre-trained encoders; {ckpt.name} is {ckpt.kind}")
    model, cfg = load_classifier(ckpt.path)
    if cfg.model.global_pool != "token":
        raise ConfigError(
            f"{ckpt.name} pools with global_pool={cfg.model.global_pool!r} (the mean of the patch "
            f"tokens, then fc_norm); transformers' ViTForImageClassification classifies the normed "
            f"cls token and has no such pooling. Export it for timm (--format timm or safetensors), or "
            f"fine-tune with model.global_pool=token for a transformers classifier"
        )
    enc = EncoderConfig(**ckpt.architecture["encoder"])
    enc = type(enc)(**{**enc.__dict__, "img_size": cfg.data.img_size})
    state = {k: v.detach() for k, v in model.state_dict().items()}
    hf_state = encoder_to_hf(state, enc.depth, prefix="vit.")
    hf_state.update({"classifier.weight": state["head.weight"], "classifier.bias": state["head.bias"]})
    classes = ckpt.architecture.get("classes") or [f"LABEL_{i}" for i in range(model.num_classes)]
    config = {
        **vit_config(enc),
        "architectures": ["ViTForImageClassification"],
        "id2label": {str(i): str(name) for i, name in enumerate(classes)},
        "label2id": {str(name): i for i, name in enumerate(classes)},
    }
    write_hf_folder(
        {k: v.contiguous() for k, v in hf_state.items()},
        config,
        out,
        preprocessing_of(ckpt.config, cfg.data.img_size, enc.in_chans),
    )
    return (
        f"wrote {out} ({model.num_classes} classes); load it with "
        f"transformers.ViTForImageClassification.from_pretrained('{out}') or "
        f"transformers.pipeline('image-classification', model='{out}')"
    )


def export_hf_segmentor(ckpt: Checkpoint, out: Path, img_size: Optional[int]) -> str:
    """A segmentation checkpoint as transformers.UperNetForSemanticSegmentation: the same modules (BEiT backbone
    with its FPN, PPM + FPN head, FCN auxiliary head), the weights renamed and the qkv projection split
    (models/hf.py: upernet_state), so its logits equal deepmim's for the same normalised pixels. The processor
    config carries mean/std and a resize to the crop size; deepmim's own evaluation slides crop-size windows
    over the image resized as mmseg does, which no transformers image processor does."""
    from .segment import load_segmentor

    if img_size:
        raise ConfigError(f"--img-size applies to pre-trained encoders; {ckpt.name} is {ckpt.kind}")
    model, cfg, classes = load_segmentor(ckpt.path)
    m = cfg.model
    backbone = model.backbone
    enc = EncoderConfig(**ckpt.architecture["encoder"])
    if model.aux_level != 2:
        raise ConfigError(
            f"{ckpt.name}: transformers' UperNet reads its auxiliary head from pyramid level 2, this "
            f"model from level {model.aux_level}"
        )
    crop = cfg.data.crop_size
    config = upernet_config(
        enc,
        model.num_classes,
        crop,
        backbone.out_indices,
        m.channels,
        m.aux_channels,
        list(m.pool_scales),
        m.rel_pos_bias,
        m.layer_scale,
        classes,
    )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    try:
        hf_state = upernet_state(state)
    except KeyError as err:
        raise CheckpointError(f"{ckpt.name}: {err.args[0]}; its layout is not the one this exporter maps") from err
    pre = preprocessing_of(ckpt.config, crop, enc.in_chans, crop_pct=1.0, pixel_scale=255.0)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(hf_state, out / WEIGHTS_FILE, {"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    processor = {
        "image_processor_type": "SegformerImageProcessor",
        "do_resize": True,
        "size": {"height": crop, "width": crop},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "do_reduce_labels": False,
    }
    (out / HF_PROCESSOR_CONFIG).write_text(json.dumps(processor, indent=2) + "\n")
    return (
        f"wrote {out} (UperNet, {model.num_classes} classes, {crop}px crops); load it with "
        f"transformers.UperNetForSemanticSegmentation.from_pretrained('{out}'); its processor resizes to "
        f"{crop}x{crop} (deepmim segment eval slides {crop}px windows instead: docs/interop.md)"
    )
