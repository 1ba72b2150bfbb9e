"""Classifiers on frozen features: DINO's weighted k-NN and MAE's linear probe."""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.schema import KnnConfig, LinearProbeConfig
from ..training.schedule import warmup_cosine_lr

logger = logging.getLogger(__name__)
_WARNED = set()


def warn_long_warmup(cfg: LinearProbeConfig) -> None:
    """Warn (once per setting) when the probe's warm-up is longer than its training: the lr never reaches
    its peak (e.g. linprobe's 10 warm-up epochs under probe.epochs=2)."""
    key = (cfg.epochs, cfg.warmup_epochs)
    if cfg.warmup_epochs > cfg.epochs and key not in _WARNED:
        _WARNED.add(key)
        logger.warning(
            "warning: probe.warmup_epochs=%g is longer than probe.epochs=%d: the probe's lr never "
            "reaches its peak; set probe.warmup_epochs below probe.epochs",
            cfg.warmup_epochs,
            cfg.epochs,
        )


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> Dict[str, float]:
    """{"top1": ..., "top5": ...} (top-k only for k <= number of classes)."""
    out = {}
    for k in ks:
        if k <= scores.shape[1]:
            pred = scores.topk(k, dim=1).indices
            out[f"top{k}"] = (pred == labels[:, None]).any(dim=1).float().mean().item()
    return out


@torch.no_grad()
def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    cfg: Optional[KnnConfig] = None,
    chunk: int = 1024,
) -> Dict[str, float]:
    """Weighted k-NN (DINO): cosine similarity of L2-normalised features; each of the top-k neighbours
    votes for its class with weight exp(sim / T). Returns top-1 (and top-5 with >= 5 classes)."""
    cfg = cfg or KnnConfig()
    if cfg.k < 1 or cfg.temperature <= 0:
        raise ValueError(f"knn.k must be >= 1 and knn.temperature > 0, got k={cfg.k}, T={cfg.temperature}")
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    k = min(cfg.k, train_x.shape[0])
    scores = []
    for start in range(0, test_x.shape[0], chunk):
        sim = test_x[start : start + chunk] @ train_x.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / cfg.temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_y[top_idx], weights)
        scores.append(votes)
    return topk_accuracy(torch.cat(scores), test_y)


class LinearProbeHead(nn.Module):
    """MAE's probe head: BatchNorm1d without affine, then Linear (weights trunc-normal std 0.01)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(x))


def build_probe_optimizer(head: LinearProbeHead, cfg: LinearProbeConfig, lr: float) -> torch.optim.Optimizer:
    """LARS as in MAE's linprobe: trust ratio on the weight matrix (always, even at wd 0), none on the
    bias (no decay either). timm.optim.Lars with per-group always_adapt. Or plain SGD + momentum."""
    decay = [head.head.weight]
    no_decay = [head.head.bias]
    if cfg.optimizer == "lars":
        from timm.optim import Lars

        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay, "always_adapt": True},
            {"params": no_decay, "weight_decay": 0.0, "always_adapt": False},
        ]
        return Lars(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "sgd":
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    raise ValueError(f"probe.optimizer must be lars or sgd, got {cfg.optimizer!r}")


def train_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    cfg: Optional[LinearProbeConfig] = None,
    return_head: bool = False,
):
    """Train the probe on cached features (per-step warm-up + cosine lr); return val top-1/top-5 and the
    final training loss (and the trained head with return_head=True)."""
    cfg = cfg or LinearProbeConfig()
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ValueError(f"probe.epochs must be >= 1 and probe.batch_size >= 2, got {cfg.epochs}, {cfg.batch_size}")
    warn_long_warmup(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        head = LinearProbeHead(train_x.shape[1], num_classes)
    n = train_x.shape[0]
    batch_size = min(cfg.batch_size, n)
    lr = cfg.lr if cfg.lr is not None else cfg.base_lr * batch_size / 256
    opt = build_probe_optimizer(head, cfg, lr)
    steps_per_epoch = max(1, n // batch_size)  # drop the last partial batch (BatchNorm needs >1 sample)
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    step, loss = 0, torch.tensor(float("nan"))
    head.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = warmup_cosine_lr(step, total, warmup, lr, cfg.min_lr)
            loss = F.cross_entropy(head(train_x[idx].float()), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    head.eval()
    with torch.no_grad():
        scores = head(val_x.float())
        result = topk_accuracy(scores, val_y)
        result["val_loss"] = F.cross_entropy(scores, val_y).item()
    result["train_loss"] = float(loss.item())
    return (result, head) if return_head else result
