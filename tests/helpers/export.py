"""Checkpoints written for the export tests, with a mean/std that is neither ImageNet's nor timm's
default, so a lost normalisation shows."""

from __future__ import annotations

import dataclasses
import re

import torch

from deepmim.checkpoint import make_checkpoint
from deepmim.config.loader import to_dict
from deepmim.config.schema import DataConfig, EncoderConfig, FinetuneConfig
from deepmim.models import create_model
from deepmim.models.classifier import vit_classifier

MEAN, STD = [0.30, 0.40, 0.50], [0.20, 0.25, 0.30]  # not ImageNet's, not timm's 0.5: a lost mean/std shows


def save_pretrained(path, preset="mae_vit_micro_p4_32", mean=MEAN, std=STD):
    model = create_model(preset)
    with torch.no_grad():  # weights no default could reproduce
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    config = {"model": dataclasses.asdict(model.cfg), "data": {"mean": mean, "std": std}}
    torch.save(make_checkpoint("pretrain", model.state_dict(), config), path)
    return path


def save_finetuned(path, global_pool="avg", img_size=32, crop_pct=0.875, classes=("cat", "dog", "emu")):
    enc = EncoderConfig(img_size=img_size, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    model = vit_classifier(enc, len(classes), img_size, global_pool)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = FinetuneConfig()
    cfg.model.global_pool = global_pool
    cfg.data = DataConfig(img_size=img_size, mean=list(MEAN), std=list(STD))
    cfg.augment.eval_crop_pct = crop_pct
    arch = {"encoder": dataclasses.asdict(enc), "num_classes": len(classes), "classes": list(classes)}
    torch.save(make_checkpoint("finetune", model.state_dict(), to_dict(cfg), arch), path)
    return path


def printed_call(message: str) -> str:
    match = re.search(r"^\s*(timm\.create_model\(.*\))\s*$", message, re.MULTILINE)
    assert match, message
    return match.group(1)
