"""Tiny data sets written in the real formats (idx, image folders, encoded images) and the
normalisation constants the data tests share."""

from __future__ import annotations

import dataclasses
import gzip
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepmim import create_model
from deepmim.config.schema import DataConfig
from tests.helpers.models import tiny_model_config

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_idx(path, array: np.ndarray, type_code: int = 0x08):
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def separable_idx(root: Path, classes: int = 4) -> Path:
    """IDX files whose class sets the brightness (60 grey levels apart, +-20 noise): linearly separable."""

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 320), ("t10k", 160)):
        labels = np.arange(n) % classes
        images = (labels[:, None, None] * 60 + rng.integers(0, 40, (n, 16, 16))).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return root


def tiny_data(n: int = 20) -> DataConfig:
    return DataConfig(name="embedded", img_size=16, num_samples=n)


CLASSES = ("circle", "square", "stripe", "dot")


def write_folder(root: Path, per_class=(3, 2)) -> Path:
    """An ImageFolder of 4 classes: `per_class` images in train/ and val/ (12 and 8 by default)."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((20, 20, 3)) * 60 + 60 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def save_checkpoint_with_data(path: Path, data) -> Path:
    """A pre-training checkpoint of a tiny random model whose config records `data` (or no data section)."""
    model = create_model(tiny_model_config())
    config = {"model": dataclasses.asdict(model.cfg)}
    if data is not None:
        config["data"] = dataclasses.asdict(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"task": "pretrain", "model": model.state_dict(), "config": config}, path)
    return path


def png(value: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(value)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def normalise(pixels, mean, std):
    return (pixels - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encoded(value: int, ext: str, size: int = 12) -> bytes:
    rng = np.random.default_rng(value)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format=FORMATS[ext])
    return buffer.getvalue()


def all_images(loader, epoch=0):
    loader.set_epoch(epoch)
    batches = list(loader)
    return torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches])
