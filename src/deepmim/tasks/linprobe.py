"""`deepmim linprobe`: MAE's linear probe (frozen encoder, BatchNorm1d(affine=False) + Linear, LARS,
warm-up + cosine) on the last block's cls token (after the final norm) or average-pooled patch tokens.

augment=True (default) runs the frozen encoder on freshly augmented images every epoch (MAE's
RandomResizedCrop + flip); augment=False trains on cached eval-transform features instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..analysis.features import (
    check_classes,
    extract_features,
    fit_normalisation,
    frozen_encoder,
    pool_tokens,
    prepare_inference,
)
from ..analysis.probes import (
    LinearProbeHead,
    build_probe_optimizer,
    topk_accuracy,
    train_linear_probe,
    warn_long_warmup,
)
from ..checkpoint import atomic_save, make_checkpoint
from ..config.loader import load_config, to_dict
from ..config.schema import LinprobeConfig
from ..data import build_dataset, build_pretrain_transform
from ..data.loader import TransformedDataset, collate_skip_broken
from ..training.distributed import barrier, wrap_ddp
from ..training.jsonfile import write_json
from ..training.precision import autocast, resolve_precision
from ..training.schedule import warmup_cosine_lr
from .base import session
from .scored_data import data_record


def load_linprobe_config(recipe: Optional[str] = None, overrides: Iterable[str] = ()) -> LinprobeConfig:
    return load_config(LinprobeConfig, recipe, overrides)


def run_linprobe(
    checkpoint: str, cfg: LinprobeConfig, out_dir: Optional[str] = None, data_source: str = "given"
) -> Dict[str, float]:
    """Train the probe; write linprobe.json and probe-head.pt (bn + head state, pool, block) to out_dir.
    The result's "data" (and linprobe.json's) names the dataset, `data_source` and the images per split.

    Under torchrun the augmented probe trains with DDP on disjoint shards of the training set (each
    process runs the frozen encoder on its own images); cached-feature probes, seconds long, train
    on rank 0 alone. Only rank 0 writes files.
    """
    with session(cfg.features.device) as env:
        return _run_linprobe(checkpoint, cfg, out_dir, env.device, env.rank, env.world_size, data_source)


def _run_linprobe(checkpoint, cfg, out_dir, device, rank, world_size, data_source="given") -> Dict[str, float]:
    t0 = time.perf_counter()
    encoder = frozen_encoder(checkpoint, cfg.features.preset)
    last = encoder.depth
    if rank != 0:
        barrier()  # rank 0 extracts (and caches) the validation features first
    val = extract_features(checkpoint, cfg.data, cfg.features.val_split, cfg.features, [last], encoder)
    if rank == 0:
        barrier()
    if not cfg.augment and rank != 0:
        barrier()  # rank 0 trains the probe on cached features alone
        return {}
    if not cfg.augment:
        train = extract_features(checkpoint, cfg.data, cfg.features.train_split, cfg.features, [last], encoder)
        num_classes = check_classes(train, val, cfg.num_classes)
        result, head = train_linear_probe(
            train.blocks[last], train.labels, val.blocks[last], val.labels, num_classes, cfg.probe, return_head=True
        )
        train_images = int(train.labels.numel())
        barrier()  # releases the other ranks (a no-op on one process)
    else:
        result, head, train_images = _train_augmented(encoder, checkpoint, cfg, val, device, rank, world_size)
        if rank != 0:
            return result
    result["seconds"] = round(time.perf_counter() - t0, 3)
    data = data_record(
        cfg.data, data_source, {cfg.features.train_split: train_images, cfg.features.val_split: int(val.labels.numel())}
    )
    out = Path(out_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "linprobe.json",
        {"checkpoint": str(checkpoint), "block": last, "data": data, "config": to_dict(cfg), "results": result},
    )
    atomic_save(
        make_checkpoint(
            "linprobe",
            head.state_dict(),
            to_dict(cfg),
            pool=cfg.features.pool,
            block=last,
            num_classes=head.head.out_features,
        ),
        out / "probe-head.pt",
    )
    return {**result, "data": data}


def _train_augmented(encoder, checkpoint, cfg: LinprobeConfig, val, device, rank: int = 0, world_size: int = 1):
    from torch.utils.data import DistributedSampler

    from ..training.progress import checkpoint_label, task_bar

    p = cfg.probe
    warn_long_warmup(p)
    dataset = build_dataset(cfg.data, cfg.features.train_split)
    labels = _labels_of(dataset)
    num_classes = check_classes(_Labels(labels), val, cfg.num_classes)
    img_size = encoder.cfg.img_size
    data = fit_normalisation(cfg.data, encoder.cfg.in_chans, checkpoint)
    transform = build_pretrain_transform(img_size, data.mean, data.std, cfg.crop_scale_min, cfg.hflip)
    n = len(dataset) // world_size
    batch_size = min(p.batch_size, n)  # per process
    mapped = TransformedDataset(dataset, transform)
    sampler = (
        DistributedSampler(mapped, world_size, rank, shuffle=True, seed=p.seed, drop_last=True)
        if world_size > 1
        else None
    )
    gen = torch.Generator().manual_seed(p.seed)
    loader = DataLoader(
        mapped,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        num_workers=0,
        collate_fn=collate_skip_broken,
        generator=gen,
    )
    with torch.random.fork_rng():
        torch.manual_seed(p.seed)
        head = LinearProbeHead(encoder.cfg.embed_dim, num_classes)
        train_head = wrap_ddp(head, torch.device("cpu")) or head  # features are moved to the CPU for the probe
        lr = p.lr if p.lr is not None else p.base_lr * batch_size * world_size / 256
        opt = build_probe_optimizer(head, p, lr)
        steps_per_epoch = max(1, len(loader))
        total, warmup = p.epochs * steps_per_epoch, p.warmup_epochs * steps_per_epoch
        precision = resolve_precision(cfg.features.precision, device)
        encoder = prepare_inference(encoder, device, precision)  # as feature extraction: autocast + SDPA
        step, loss = 0, torch.tensor(float("nan"))
        bar = task_bar(
            total=total, desc=f"linprobe {checkpoint_label(checkpoint)}", enabled=cfg.features.progress and rank == 0
        )
        for epoch in range(p.epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            head.train()
            for batch in loader:
                images, targets = batch.images, batch.labels
                if images.shape[0] < 2:
                    continue
                with torch.no_grad(), autocast(device, precision):
                    taps, _ = encoder(images.to(device), taps=[encoder.depth])
                    x = pool_tokens(encoder.norm(taps[encoder.depth]), cfg.features.pool).float().cpu()
                for group in opt.param_groups:
                    group["lr"] = warmup_cosine_lr(step, total, warmup, lr, p.min_lr)
                loss = F.cross_entropy(train_head(x), targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
        bar.close()
    head.eval()
    with torch.no_grad():
        scores = head(val.blocks[encoder.depth])
        result = topk_accuracy(scores, val.labels)
        result["val_loss"] = F.cross_entropy(scores, val.labels).item()
    result["train_loss"] = float(loss.item())
    return result, head, len(dataset)


def _labels_of(dataset) -> torch.Tensor:
    """Labels without decoding images where the dataset lists them (ImageFolder, IDX: `targets`;
    the embedded data: index % 10)."""
    if hasattr(dataset, "targets"):
        return torch.as_tensor(list(dataset.targets)).long()
    if type(dataset).__name__ == "EmbeddedShapes":
        return torch.arange(len(dataset)) % 10
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


class _Labels:
    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    @property
    def num_classes(self) -> int:
        return int(self.labels.max().item()) + 1 if self.labels.numel() else 0
