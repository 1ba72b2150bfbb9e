"""Labels are optional: pre-training needs images only.

A dataset without labels (a flat folder of images, `data.name=images`; WebDataset shards without a
`cls` entry, such as img2dataset's jpg + json/txt layout; a Hugging Face dataset with only an image
column) gives every image the label `UNLABELLED` when its caller says labels are optional (`labels=None`),
and stops with `missing_labels` when the caller needs them, the message saying which work needs them and why.
"""

from __future__ import annotations

from deepmim.data.errors import DataError

UNLABELLED = -1
# Why most commands need labels: the default `labels` of build_dataset and build_pretrain_loader.
CLASSES = (
    "this command learns or scores image classes (fine-tuning, the linear probes, k-NN and the "
    "analyses that probe features all compare predictions with labels)"
)
ONLINE_PROBE = (
    "train.online_probe=true trains a classifier per block on the labels during pre-training "
    "(set it to false to pre-train on unlabelled images)"
)


def missing_labels(what: str, why: str) -> DataError:
    """The one message for labels a task needs and the data does not have."""
    return DataError(
        f"{what}, but {why}; point data.path (and data.label_key) at labelled data for this "
        f"command. Pre-training itself needs no labels: deepmim pretrain reads unlabelled images"
    )
