"""Launching `deepmim` as real processes (alone or under torchrun) and reading what the runs leave."""

import json
import os
import re
import sys
from pathlib import Path

import torch

TINY = """\
model:
  encoder: {img_size: 16, patch_size: 4, embed_dim: 32, depth: 4, num_heads: 2}
  heads:
    - {block: 2, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}
    - {block: 4, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}
data: {name: embedded, img_size: 16, num_samples: 64, num_workers: 0}
optim: {base_lr: 1.0e-3, warmup_epochs: 1}
train: {epochs: 3, batch_size: 8, log_every_steps: 2, progress: false, tensorboard: false, plots: false,
        precision: fp32, device: cpu, seed: 3}
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launcher(procs: int = 1, torchrun_args=()) -> list:
    """`python -m deepmim` on 1 process, or under torchrun (--standalone: a free port) on `procs`."""
    if procs == 1:
        return [sys.executable, "-m", "deepmim"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={procs}",
        *torchrun_args,
        "-m",
        "deepmim",
    ]


def deepmim(recipe: Path, out: Path, *overrides: str, procs: int = 1, torchrun_args=()) -> list:
    """The command line of a `deepmim pretrain` run on `procs` processes."""
    return launcher(procs, torchrun_args) + ["pretrain", "--config", str(recipe), f"train.output_dir={out}", *overrides]


def weights(out: Path) -> dict:
    return torch.load(out / "checkpoint-last.pt", weights_only=True)["model"]


def train_losses(out: Path) -> list:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["type"] == "train"]


def max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def children(pid: int) -> list:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def logged_step(out: Path) -> int:
    try:
        return max(int(m) for m in re.findall(r'"step": (\d+)', (out / "metrics.jsonl").read_text()))
    except (OSError, ValueError):
        return 0
