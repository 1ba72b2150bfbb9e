"""`deepmim data pack | index | bench`: write WebDataset shards from an ImageFolder, index shards anywhere,
and time a data pipeline as training reads it.

pack: every split folder of the ImageFolder (train/, val/, test/; the folder itself when it has none) in a
seeded random order (so each shard mixes the classes), `--shard-size` samples per tar: `<split>-000000.tar`
holding `<key>.<ext>` (the file's own bytes, not re-encoded) and `<key>.cls` (the class index), plus
`<split>.json`, the index with every shard's sample count and the class names. `data.name=wds
data.path=OUT` then reads it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from ..data.folder import list_samples, resolve_split_dir
from ..data.wds import count_samples, expand_pattern, webdataset, write_index

SPLITS = ("train", "val", "test")


def _splits_of(root: Path, splits: Optional[List[str]]) -> Dict[str, Path]:
    if splits:
        return {s: Path(resolve_split_dir(str(root), s)) for s in splits}
    found = {s: root / s for s in SPLITS if (root / s).is_dir()}
    return found or {"train": root}


def pack_imagefolder(
    root: str, out: str, shard_size: int = 1000, splits: Optional[List[str]] = None, seed: int = 0
) -> Dict[str, Dict[str, int]]:
    """Write the shards and indices; returns {split: {"samples": n, "shards": k}}."""
    wds = webdataset()
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    root_path, out_path = Path(os.path.expanduser(root)), Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, folder in _splits_of(root_path, splits).items():
        classes, samples = list_samples(str(folder))
        if not samples:
            raise ValueError(f"'{folder}' holds no images in class sub-folders (root/<class>/*.jpg)")
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
        urls, counts = [], []
        for start in range(0, len(order), shard_size):
            url = out_path / f"{split}-{len(urls):06d}.tar"
            chunk = order[start : start + shard_size]
            with wds.TarWriter(str(url)) as sink:
                for i in chunk:
                    path, label = samples[i]
                    ext = Path(path).suffix.lower().lstrip(".")
                    sink.write({"__key__": f"{i:09d}", ext: Path(path).read_bytes(), "cls": str(label).encode()})
            urls.append(str(url))
            counts.append(len(chunk))
        write_index(out_path / f"{split}.json", urls, counts, classes, name=split)
        written[split] = {"samples": len(order), "shards": len(urls)}
    return written


def index_shards(pattern: str, out: str, classes: Optional[List[str]] = None) -> Dict[str, int]:
    """Count the samples of every shard a pattern names (any url webdataset opens: local, pipe:, ...)."""
    urls = expand_pattern(pattern)
    counts = [count_samples(u) for u in urls]
    write_index(Path(out), urls, counts, classes)
    return {"shards": len(urls), "samples": sum(counts)}


def bench_loader(overrides: Iterable[str], batches: int = 50, warmup: int = 5) -> Dict[str, float]:
    """Images/s of the training loader data.* and train.batch_size describe (decoding, augmentation, masks)."""
    from ..config.loader import load_config
    from ..config.schema import PretrainConfig
    from ..data import build_pretrain_loader

    cfg = load_config(PretrainConfig, None, list(overrides))
    enc = cfg.model.encoder
    loader = build_pretrain_loader(
        cfg.data,
        cfg.train.batch_size,
        cfg.train.seed,
        mask_patches=(cfg.data.img_size // enc.patch_size) ** 2,
        labels=None,
    )
    loader.set_epoch(0)
    images, start, seen = 0, None, 0
    for batch in loader:
        seen += 1
        if seen == warmup + 1:
            start = time.perf_counter()
        if start is not None:
            images += batch.images.shape[0]
        if seen >= warmup + batches:
            break
    if start is None or images == 0:
        raise ValueError(f"the loader gave {seen} batches, fewer than warm-up {warmup} + 1: lower --warmup")
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "batches": seen - warmup}
