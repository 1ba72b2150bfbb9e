"""Frozen-encoder features of a dataset, for every requested block in one pass, cached on disk.

Pooling (`pool`): "cls" takes the cls token, "avg" the mean of the patch tokens.
Norm: the LAST encoder block's tokens go through the encoder's final LayerNorm before pooling
(what MAE's linear probe reads: the cls token after `norm`); intermediate blocks are pooled from
the raw residual stream (no norm), as the DeepMIM decoders read them. The probe's own
BatchNorm normalises every block's features anyway.

The cache file is keyed by the checkpoint (resolved path, size, mtime), pool, the dataset
identity (name, path, num_samples, max_samples, source img_size), split, the encoder input size, mean/std,
crop ratio and preset; it stores one tensor per block, so asking for blocks already cached
runs no encoder, and asking for new ones extracts only those (still one pass) and merges them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from ..checkpoint import explain_load_error, read_checkpoint
from ..config.loader import ConfigError
from ..config.schema import DataConfig, FeatureConfig
from ..data import build_dataset, build_eval_transform
from ..data.loader import TransformedDataset, collate_skip_broken
from ..models import loading
from ..training.distributed import resolve_device
from ..training.host_memory import reuse_freed_host_memory
from ..training.precision import resolve_precision
from ..training.progress import checkpoint_label

logger = logging.getLogger(__name__)

POOLS = ("cls", "avg")


@dataclass
class Features:
    """{block: (N, D) float32} and the (N,) int64 labels of one split."""

    blocks: Dict[int, torch.Tensor]
    labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(self.labels.max().item()) + 1 if self.labels.numel() else 0


def frozen_encoder(checkpoint: str | Path, preset: Optional[str] = None) -> torch.nn.Module:
    """The encoder of a checkpoint (models.loading.load_encoder: no decoders, no teacher file needed),
    frozen, in eval mode. Files without a deepmim config (the authors', MAE, timm) need `preset`."""
    return loading.frozen(loading.load_encoder(checkpoint, preset))


def resolve_blocks(blocks: Optional[Sequence[int]], depth: int) -> List[int]:
    if not blocks:
        return list(range(1, depth + 1))
    blocks = sorted(set(int(b) for b in blocks))
    if blocks[0] < 1 or blocks[-1] > depth:
        raise ValueError(f"features.blocks must be in 1..{depth} (the encoder has {depth} blocks), got {blocks}")
    return blocks


def _checkpoint_identity(path: Path) -> Dict[str, object]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(
    checkpoint: str | Path,
    data: DataConfig,
    split: str,
    img_size: int,
    pool: str,
    crop_ratio: float,
    preset: Optional[str],
    precision: str = "fp32",
) -> str:
    ident = {
        "checkpoint": _checkpoint_identity(Path(checkpoint)),
        "dataset": {
            "name": data.name,
            "path": os.path.abspath(os.path.expanduser(data.path)) if data.path else None,
            "num_samples": data.num_samples if data.name == "embedded" else None,
            "source_img_size": data.img_size if data.name == "embedded" else None,
        },
        "split": split,
        "img_size": img_size,
        "pool": pool,
        "mean": list(data.mean),
        "std": list(data.std),
        "crop_ratio": crop_ratio,
        "preset": preset,
        "version": 1,
    }
    if data.max_samples is not None:  # only when set, so caches written before the option stay valid
        ident["dataset"]["max_samples"] = data.max_samples
    if precision != "fp32":  # fp32 keys stay as they were, so existing caches remain valid
        ident["precision"] = precision
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def user_cache_dir() -> Path:
    """deepmim's one cache directory: $DEEPMIM_CACHE, else $XDG_CACHE_HOME/deepmim, else ~/.cache/deepmim
    (the XDG base-directory rule)."""
    if os.environ.get("DEEPMIM_CACHE"):
        return Path(os.environ["DEEPMIM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepmim"


def resolve_cache_dir(cache_dir: Optional[str]) -> Optional[Path]:
    """features.cache_dir -> the folder for feature files: auto -> user_cache_dir()/features; None or "" ->
    no cache; any other value is a path."""
    if not cache_dir:
        return None
    if cache_dir == "auto":
        return user_cache_dir() / "features"
    return Path(cache_dir).expanduser()


def pool_tokens(tokens: torch.Tensor, pool: str) -> torch.Tensor:
    return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)


def prepare_inference(encoder: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """The encoder on `device` with the attention kernel for a forward-only pass: SDPA (its slow CPU bf16
    case is the backward, which inference does not run)."""
    encoder = encoder.to(device)
    if hasattr(encoder, "set_fused_attn"):
        encoder.set_fused_attn(True)
    return encoder


@torch.no_grad()
def run_encoder(
    encoder: torch.nn.Module,
    loader: DataLoader,
    blocks: List[int],
    pool: str,
    device: torch.device,
    progress: bool = False,
    desc: str = "features",
    precision: str = "fp32",
) -> Features:
    """One pass over `loader`, tapping every block in `blocks`, under `precision`'s autocast (as training)."""
    from ..training.precision import autocast
    from ..training.progress import task_bar

    encoder = prepare_inference(encoder, device, precision)
    out: Dict[int, List[torch.Tensor]] = {b: [] for b in blocks}
    labels: List[torch.Tensor] = []
    total = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    bar = task_bar(total=total, desc=f"{desc} (images)", enabled=progress)  # counts images, not batches
    for batch in loader:
        images, targets = batch[0], batch[1]
        bar.update(images.shape[0])
        if images.numel() == 0:
            continue
        with autocast(device, precision):
            taps, _ = encoder(images.to(device), taps=blocks)
            for b in blocks:
                tokens = encoder.norm(taps[b]) if b == encoder.depth else taps[b]
                out[b].append(pool_tokens(tokens, pool).float().cpu())
        labels.append(targets.long().cpu())
    bar.close()
    return Features({b: torch.cat(v) for b, v in out.items()}, torch.cat(labels))


def fit_normalisation(data: DataConfig, in_chans: int, checkpoint=None) -> DataConfig:
    """`data` with one mean/std value per input channel of the encoder: its own values when they fit,
    else those the checkpoint was trained with (deepmim runs record data.mean/std), so a grey
    (in_chans=1) encoder is probed on grey inputs without restating its statistics."""
    if len(data.mean) == in_chans:
        return data
    trained = {}
    if checkpoint is not None and Path(str(checkpoint)).is_file():
        trained = read_checkpoint(checkpoint).config.get("data") or {}
    if len(trained.get("mean") or []) == in_chans and len(trained.get("std") or []) == in_chans:
        logger.info("data.mean/std of %s (%s channel(s)) used for its encoder", checkpoint, in_chans)
        return dataclasses.replace(data, mean=list(trained["mean"]), std=list(trained["std"]))
    raise ConfigError(
        f"the encoder of {checkpoint} takes {in_chans} input channel(s) but data.mean has "
        f"{len(data.mean)} values; set data.mean and data.std to the {in_chans} value(s) it was "
        f"trained with (e.g. data.mean=[0.286] data.std=[0.353] for Fashion-MNIST)"
    )


def extract_features(
    checkpoint: str | Path,
    data: DataConfig,
    split: str,
    feat: FeatureConfig,
    blocks: Optional[Sequence[int]] = None,
    encoder: Optional[torch.nn.Module] = None,
) -> Features:
    """Features of `split` for `blocks` (default: feat.blocks, None = all), from the cache when possible."""
    if feat.pool not in POOLS:
        raise ValueError(f"features.pool must be one of {POOLS}, got {feat.pool!r}")
    encoder = encoder if encoder is not None else frozen_encoder(checkpoint, feat.preset)
    img_size = encoder.cfg.img_size
    data = fit_normalisation(data, encoder.cfg.in_chans, checkpoint)
    blocks = resolve_blocks(blocks if blocks is not None else feat.blocks, encoder.depth)

    device = resolve_device(feat.device)
    precision = resolve_precision(feat.precision, device)
    cached: Optional[dict] = None
    cache_path: Optional[Path] = None
    cache_dir = resolve_cache_dir(feat.cache_dir)
    if cache_dir is not None:
        key = cache_key(checkpoint, data, split, img_size, feat.pool, feat.crop_ratio, feat.preset, precision)
        cache_path = cache_dir / f"{Path(checkpoint).stem}-{split}-{feat.pool}-{key}.pt"
        if cache_path.is_file():
            try:
                cached = torch.load(cache_path, map_location="cpu", weights_only=True)
            except Exception as err:  # a torn file: extract again (torch's text would invite weights_only=False)
                logger.warning("ignoring the feature cache, extracting again: %s", explain_load_error(cache_path, err))
    have = dict(cached["blocks"]) if cached else {}
    missing = [b for b in blocks if b not in have]
    labels = cached["labels"] if cached else None
    if missing:
        reuse_freed_host_memory(feat.reuse_host_memory)
        dataset = TransformedDataset(
            build_dataset(data, split), build_eval_transform(img_size, data.mean, data.std, feat.crop_ratio)
        )
        loader = DataLoader(
            dataset, batch_size=feat.batch_size, shuffle=False, num_workers=0, collate_fn=collate_skip_broken
        )
        new = run_encoder(
            encoder,
            loader,
            missing,
            feat.pool,
            device,
            feat.progress,
            desc=f"{checkpoint_label(checkpoint)} {split} blocks {missing}",
            precision=precision,
        )
        if labels is not None and not torch.equal(labels, new.labels):
            have = {}  # the data changed under the same key: drop the stale entries
        have.update(new.blocks)
        labels = new.labels
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp")
            torch.save({"blocks": have, "labels": labels}, tmp)
            os.replace(tmp, cache_path)
    return Features({b: have[b] for b in blocks}, labels)


def check_classes(train: Features, val: Features, num_classes: Optional[int]) -> int:
    """The number of classes; a clear error when train/val/--num-classes disagree."""
    n_train, n_val = train.num_classes, val.num_classes
    if num_classes is not None and n_train != num_classes:
        raise ValueError(
            f"class-count mismatch: num_classes={num_classes} but the training data has "
            f"{n_train} classes (labels 0..{n_train - 1})"
        )
    if n_val > n_train:
        raise ValueError(
            f"class-count mismatch: the validation data has labels up to {n_val - 1} but the "
            f"training data only {n_train} classes"
        )
    if n_train < 2:
        raise ValueError(f"probing needs at least 2 classes, the training data has {n_train}")
    return n_train
