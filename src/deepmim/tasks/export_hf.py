"""`deepmim export --format hf | hf-encoder`: Hugging Face `transformers` folders (config.json +
model.safetensors, the key maps of models/hf.py), written without importing transformers:

    hf          an MAE-layout model (its head on the final-normed last block, pixel target) as
                transformers.ViTMAEForPreTraining.from_pretrained(out): same loss and predictions for the
                same images and `noise` (tested). A DeepMIM model gives its encoder and last decoder; the
                extra decoders are pre-training scaffolding and are left out (the message says so).
    hf-encoder  the encoder alone as transformers.ViTModel.from_pretrained(out, add_pooling_layer=False)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from ..checkpoint import Checkpoint, CheckpointError, save_weights
from ..config.loader import ConfigError
from ..models.deepmim import DeepMIM
from ..models.export import encoder_state_dict
from ..models.hf import CONFIG_FILE, check_mae_layout, encoder_to_hf, vit_config, vitmae_config, vitmae_state
from ..models.loading import load_encoder, load_weights, saved_model_config
from ..models.presets import preset_config

WEIGHTS_FILE = "model.safetensors"


def write_hf_folder(state: Dict[str, Any], config: Dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_weights(state, out / WEIGHTS_FILE, {"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def _pretrained(ckpt: Checkpoint, what: str) -> None:
    if ckpt.task not in ("pretrain", None):
        raise CheckpointError(f"{ckpt.name} is {ckpt.kind}: {what} is written from pre-trained weights")


def export_vitmae(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset: Optional[str]) -> str:
    _pretrained(ckpt, "a ViTMAEForPreTraining folder")
    if img_size:
        raise ConfigError("--img-size is not offered for --format hf: ViTMAE's decoder keeps the grid it was trained "
                          "on (transformers resizes at run time with interpolate_pos_encoding=True)")
    cfg = preset_config(preset) if preset else saved_model_config(ckpt.path, ckpt)
    if cfg is None:
        raise CheckpointError(f"{ckpt.name} holds no deepmim config: name its architecture with --preset NAME "
                              f"(e.g. --preset mae_vit_base; deepmim presets lists them)")
    head = check_mae_layout(cfg)  # before building: a teacher target on another head needs no file here
    model = DeepMIM(cfg)
    load_weights(model, ckpt.raw if ckpt.path is None else ckpt.path)
    write_hf_folder(vitmae_state(model), vitmae_config(cfg), out)
    extra = [h.block for h in cfg.heads if h.block != head.block]
    left_out = f"; the decoders at blocks {', '.join(map(str, extra))} are left out (ViTMAE has one)" if extra else ""
    return (f"wrote {out} (ViTMAE: encoder + the decoder of block {head.block}{left_out}); load it with "
            f"transformers.ViTMAEForPreTraining.from_pretrained('{out}')")


def export_vit(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset: Optional[str]) -> str:
    _pretrained(ckpt, "a ViTModel folder")
    encoder = load_encoder(ckpt.path, preset)
    enc = encoder.cfg
    size = img_size or enc.img_size
    state = encoder_to_hf(encoder_state_dict(encoder, img_size), enc.depth)
    config = vit_config(type(enc)(**{**enc.__dict__, "img_size": size}))
    write_hf_folder(state, config, out)
    return (f"wrote {out} (the encoder at {size}px); load it with "
            f"transformers.ViTModel.from_pretrained('{out}', add_pooling_layer=False)")
