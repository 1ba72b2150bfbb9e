"""Tiny training runs and what they leave: configs and CLI overrides, final weights, metrics rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import torch

from deepmim.checkpoint import LAST, PREV
from deepmim.config.schema import DataConfig, OptimConfig, PretrainConfig, PretrainTrainConfig
from tests.helpers.models import tiny_model_config

TINY = [
    "model.preset=mae_vit_micro_p4_32",
    "model.encoder.img_size=16",
    "model.encoder.depth=2",
    "model.heads.0.block=2",
    "data.img_size=16",
    "data.num_samples=64",
    "data.num_workers=0",
    "train.batch_size=16",
    "train.epochs=2",
    "train.precision=fp32",
    "train.device=cpu",
    "train.progress=false",
    "train.plots=false",
    "train.tensorboard=false",
    "optim.warmup_epochs=1",
]


def rows(out: Path, kind: str):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (LAST, PREV, "config.yaml", "metrics.jsonl"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def strict_load(text: str):
    """json.loads that refuses NaN / Infinity, as JavaScript's JSON.parse, jq and serde do."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def tiny_pretrain_config(out: Path, heads=(2, 4), num_samples: int = 64, **train) -> PretrainConfig:
    """16px embedded shapes, 64 images, batch 16: 4 steps an epoch, a second or two per run; `train`: any
    train.* field (the online probe's too). Torch's thread count stays fixed (adapt_threads=False): tests
    compare runs bit for bit, whatever else the machine runs."""
    defaults = dict(
        epochs=2,
        batch_size=16,
        output_dir=str(out),
        log_every_steps=1,
        progress=False,
        tensorboard=False,
        plots=False,
        precision="fp32",
        device="cpu",
        seed=3,
        adapt_threads=False,
    )
    defaults.update(train)
    return PretrainConfig(
        model=tiny_model_config(heads=heads),
        data=DataConfig(name="embedded", img_size=16, num_samples=num_samples, num_workers=0),
        optim=OptimConfig(base_lr=1e-3, warmup_epochs=1),
        train=PretrainTrainConfig(**defaults),
    )


def final_weights(out: Path):
    return torch.load(out / "checkpoint-last.pt", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def tiny_segment_overrides(checkpoint, out) -> List[str]:
    """The overrides every tiny `upernet_demo` run shares: 16px embedded shapes (8 images), the tiny
    pre-trained encoder `checkpoint`, a small head, validation every 2 iterations, output in `out`, on the CPU in
    fp32, quiet. Each run adds its own validation size, batch, iterations and warm-up."""
    return [
        f"model.checkpoint={checkpoint}",
        "model.channels=16",
        "model.aux_channels=8",
        "data.img_size=16",
        "data.scale=[16,16]",
        "data.crop_size=16",
        "data.num_samples=8",
        "data.num_workers=0",
        "eval.crop_size=16",
        "train.eval_every=2",
        f"train.output_dir={out}",
        "train.progress=false",
        "train.tensorboard=false",
        "train.device=cpu",
        "train.precision=fp32",
    ]
