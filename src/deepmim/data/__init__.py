"""Datasets, augmentation and the resumable pre-training loader.

Every dataset yields (uint8 image (C, H, W), int label; C = 1 for IDX files), or None for an unreadable file;
`build_pretrain_loader` turns one into reproducible, resumable `Batch`es.
"""

from deepmim.data.embedded import CLASSES as EMBEDDED_CLASSES
from deepmim.data.embedded import EmbeddedShapes
from deepmim.data.errors import DataError
from deepmim.data.folder import IMAGE_EXTENSIONS, ImageFolder, load_rgb
from deepmim.data.idx import FASHION_MNIST_CLASSES, IdxDataset, read_idx
from deepmim.data.loader import (
    DATASET_NAMES,
    Batch,
    PretrainLoader,
    ResumableSampler,
    SeededAugmentation,
    TransformedDataset,
    build_dataset,
    build_pretrain_loader,
    collate_skip_broken,
    mix_seed,
    preview_images,
    validate_data_config,
)
from deepmim.data.transforms import (
    NormalizeUint8,
    PretrainTransform,
    build_eval_transform,
    build_pretrain_transform,
    denormalize,
    sample_crop_box,
)

__all__ = [
    "Batch",
    "DATASET_NAMES",
    "DataError",
    "EMBEDDED_CLASSES",
    "EmbeddedShapes",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "IdxDataset",
    "NormalizeUint8",
    "ImageFolder",
    "PretrainLoader",
    "PretrainTransform",
    "ResumableSampler",
    "SeededAugmentation",
    "TransformedDataset",
    "build_dataset",
    "build_eval_transform",
    "build_pretrain_loader",
    "build_pretrain_transform",
    "collate_skip_broken",
    "denormalize",
    "load_rgb",
    "mix_seed",
    "preview_images",
    "read_idx",
    "sample_crop_box",
    "validate_data_config",
]
