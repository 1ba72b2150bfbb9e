"""`data.name=hf`: Hugging Face `datasets` data from a local path (the `datasets` package, an optional extra).

data.path is a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (a DatasetDict's
splits by name; `val` also finds `validation`), or parquet files: a folder holding `<split>-*.parquet`
(the layout of ImageNet-1k on the Hub: data/train-00000-of-00294.parquet, ...), possibly under `data/`
or `<split>/`, a glob (`{split}` is replaced by data.split) or one file. Parquet files are read with
`datasets.load_dataset("parquet")`, which converts them once into its Arrow cache (HF_DATASETS_CACHE).

Arrow tables are memory-mapped and indexable, so this is a map-style dataset: the seeded sampler shards it
over ranks, the DataLoader over workers (no sample twice), resume is exact and augmentation and masks come
from (seed, epoch, index) as for ImageFolder. Columns: data.image_key (default `image`: an Image feature,
encoded bytes or a path) and data.label_key (default `label`; its ClassLabel names become the classes).
"""

from __future__ import annotations

import glob
import io
import os
from typing import List, Optional

import torch
from torch.utils.data import Dataset

from deepmim.data.errors import DataError
from deepmim.data.folder import load_rgb
from deepmim.data.labels import CLASSES, UNLABELLED, missing_labels
from deepmim.data.wds import SPLIT_ALIASES, decode_image

IMAGE_COLUMN, LABEL_COLUMN = "image", "label"


def datasets_module():
    try:
        import datasets
    except ImportError as err:
        raise DataError("data.name=hf needs the datasets package: pip install 'deepmim[hf]'") from err
    return datasets


def parquet_files(path: str, split: str) -> List[str]:
    """The parquet files of `split` under data.path (see the module docstring)."""
    path = path.replace("{split}", split)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return sorted(glob.glob(path))
    for name in SPLIT_ALIASES.get(split, (split,)):
        for pattern in (f"{name}-*.parquet", f"{name}.parquet", f"data/{name}-*.parquet", f"{name}/*.parquet"):
            found = sorted(glob.glob(os.path.join(path, pattern)))
            if found:
                return found
    return []


def load_split(path: str, split: str):
    """A `datasets.Dataset` for the split: a save_to_disk folder, or parquet files."""
    datasets = datasets_module()
    path = os.path.expanduser(path)
    if os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "dataset_info.json"))
        or os.path.isfile(os.path.join(path, "dataset_dict.json"))
    ):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            for name in SPLIT_ALIASES.get(split, (split,)):
                if name in loaded:
                    return loaded[name]
            raise DataError(f"data.path '{path}' has splits {sorted(loaded)}, not '{split}'; set data.split")
        return loaded
    files = parquet_files(path, split)
    if not files:
        raise DataError(
            f"data.path '{path}' is neither a save_to_disk folder nor has parquet files for split "
            f"'{split}' ({split}-*.parquet, data/{split}-*.parquet, {split}/*.parquet, or a glob)"
        )
    return datasets.load_dataset("parquet", data_files={split: files}, split=split)


class HFImageDataset(Dataset):
    """Items (uint8 (3, H, W), label) of a `datasets.Dataset`; None for an unreadable image (unless strict)."""

    def __init__(
        self,
        path: str,
        split: str,
        image_key: Optional[str] = None,
        label_key: Optional[str] = None,
        strict: bool = False,
        labels: Optional[str] = CLASSES,
    ):
        """`labels`: why labels are needed, or None when they are optional (pre-training): a dataset with only
        an image column then gives every image UNLABELLED."""
        datasets = datasets_module()
        table = load_split(path, split)
        self.image_key, self.label_key, self.strict = image_key or IMAGE_COLUMN, label_key or LABEL_COLUMN, strict
        if self.image_key not in table.column_names:
            raise DataError(
                f"data.image_key='{self.image_key}' is not a column of '{path}' ({split}): it has {table.column_names}"
            )
        has_labels = self.label_key in table.column_names
        if not has_labels and (labels is not None or label_key is not None):  # a label_key asked for must exist
            raise missing_labels(
                f"data.label_key='{self.label_key}' is not a column of '{path}' ({split}): it has {table.column_names}",
                labels or "data.label_key names a column",
            )
        if isinstance(table.features[self.image_key], datasets.Image):  # decode ourselves: bytes in, uint8 out
            table = table.cast_column(self.image_key, datasets.Image(decode=False))
        self.table = table
        if not has_labels:
            self.targets: List[int] = [UNLABELLED] * len(table)
            self.classes: List[str] = []
            return
        self.targets = [int(v) for v in table[self.label_key]]
        feature = table.features[self.label_key]
        names = getattr(feature, "names", None)
        self.classes = list(names) if names else [str(c) for c in range(max(self.targets) + 1)]

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        value = self.table[int(index)][self.image_key]
        try:
            return self.decode(value), self.targets[index]
        except Exception as exc:  # corrupt bytes, a missing file
            if self.strict:
                raise DataError(
                    f"cannot read image {index} of the data ({type(exc).__name__}: {exc}); set "
                    f"data.strict=false to skip unreadable images"
                ) from exc
            return None

    @staticmethod
    def decode(value) -> torch.Tensor:
        if isinstance(value, dict):  # an Image feature: {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return decode_image(value["bytes"])
            return load_rgb(value["path"])
        if isinstance(value, (bytes, bytearray)):
            return decode_image(bytes(value))
        if isinstance(value, str):
            return load_rgb(value)
        from PIL import Image

        if isinstance(value, Image.Image):
            buffer = io.BytesIO()
            value.save(buffer, format="PNG")
            return decode_image(buffer.getvalue())
        raise DataError(
            f"cannot read an image from a {type(value).__name__} value; data.image_key must name an "
            f"Image, bytes or path column"
        )
