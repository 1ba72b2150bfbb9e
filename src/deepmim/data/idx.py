"""MNIST / Fashion-MNIST from their IDX files (plain or .gz), no torchvision download logic.

Debian's `dataset-fashion-mnist` package puts them in /usr/share/datasets/fashion-mnist as
`train-images-idx3-ubyte.gz` etc.; Kaggle copies use `train-images.idx3-ubyte`; both work.
split "train" reads `train-*`, "val"/"test" read `t10k-*`.
"""

from __future__ import annotations

import gzip
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from deepmim.data.errors import DataError

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLIT_PREFIX = {"train": "train", "val": "t10k", "test": "t10k"}

# Label names of Fashion-MNIST (pass as `classes=`; the files themselves carry no names).
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file: magic 0x0000<type><ndim>, ndim big-endian uint32 sizes, then data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:  # includes gzip.BadGzipFile and truncated .gz
        raise DataError(f"cannot read IDX file '{path}': {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(
            f"'{path}' is not an IDX file (magic bytes {data[:4].hex() or 'missing'}; expected "
            "00 00 <type 08/09/0b/0c/0d/0e> <ndim>)"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file '{path}' is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"IDX file '{path}' has {len(data)} bytes, its header {shape} implies {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_file(root: str, prefix: str, kind: str, rank: int) -> str:
    """Path of e.g. prefix='train', kind='images', rank=3, accepting the usual spellings."""
    stems = [f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"]
    candidates = [stem + ext for stem in stems for ext in ("", ".gz")]
    for name in candidates:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    raise DataError(
        f"data.path '{root}' has no {_quoted(candidates)}; set data.path to a folder with "
        "MNIST/Fashion-MNIST IDX files (e.g. /usr/share/datasets/fashion-mnist from the Debian "
        "package dataset-fashion-mnist)"
    )


def _quoted(names: List[str]) -> str:
    return " or ".join(f"'{n}'" for n in names)


class IdxDataset(Dataset):
    """MNIST-style IDX images and labels held in memory; items are (uint8 (1, H, W), label): grey stays
    grey (the transforms repeat it to 3 channels when data.mean has 3 values)."""

    def __init__(self, root: str, split: str = "train", classes: Optional[List[str]] = None):
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise DataError(
                f"data.path '{self.root}' does not exist; set data.path to a folder with "
                "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-... files"
            )
        if split not in _SPLIT_PREFIX:
            raise DataError(f"unknown data.split '{split}' for IDX data; choose one of {sorted(_SPLIT_PREFIX)}")
        prefix = _SPLIT_PREFIX[split]
        images_path = find_idx_file(self.root, prefix, "images", 3)
        labels_path = find_idx_file(self.root, prefix, "labels", 1)
        self.images = read_idx(images_path)
        self.labels = read_idx(labels_path)
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise DataError(
                f"'{images_path}' must hold uint8 images (N, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise DataError(
                f"'{labels_path}' must hold one label per image ({len(self.images)}), got shape {self.labels.shape}"
            )
        if len(self.images) == 0:
            raise DataError(f"'{images_path}' holds no images")
        self.classes = classes or [str(c) for c in range(int(self.labels.max()) + 1)]
        self.targets = self.labels.astype(np.int64).tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[index]).unsqueeze(0), self.targets[index]
