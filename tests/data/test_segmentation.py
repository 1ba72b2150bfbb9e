"""Semantic segmentation: pyramid shapes, metrics against hand counts, label mapping, data errors,
sliding-window inference, the poly schedule, exact resume, and a tiny model that overfits."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepmim.data.errors import DataError
from deepmim.data.segmentation import (
    MaskFolder,
    SegDataConfig,
    SegTransform,
    StreamDataset,
    build_seg_dataset,
    map_labels,
    random_crop_box,
)


def test_reduce_zero_label_maps_ade20k_values():
    raw = np.array([[0, 1, 150], [255, 2, 0]], dtype=np.uint8)
    assert map_labels(raw, 150, True, 255, "m.png").tolist() == [[255, 0, 149], [255, 1, 255]]
    assert map_labels(raw[:, 1:2], 3, False, 255, "m.png").tolist() == [[1], [2]]


def write_pair(root: Path, split: str, stem: str, mask: np.ndarray, size=None, masks="annotations"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / masks / split).mkdir(parents=True, exist_ok=True)
    h, w = size or mask.shape
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "images" / split / f"{stem}.jpg")
    Image.fromarray(mask.astype(np.uint8)).save(root / masks / split / f"{stem}.png")


def test_ade20k_layout_reads_and_reduces_labels(tmp_path):
    write_pair(tmp_path, "training", "a", np.array([[0, 1], [150, 7]]))
    dataset = build_seg_dataset(SegDataConfig(name="ade20k", path=str(tmp_path)), "train")
    sample = dataset[0]
    assert len(dataset) == 1 and dataset.num_classes == 150 and sample.name == "a"
    assert (dataset.classes[0], dataset.classes[44], dataset.classes[149]) == ("wall", "chest of drawers", "flag")
    assert sample.label.tolist() == [[255, 0], [149, 6]] and sample.image.shape == (3, 2, 2)


def test_mask_folder_errors_name_the_file(tmp_path):
    write_pair(tmp_path, "train", "bad_value", np.array([[0, 9]]), masks="masks")
    write_pair(tmp_path, "train", "bad_size", np.array([[0, 1]]), size=(3, 3), masks="masks")
    dataset = MaskFolder(str(tmp_path), "train", num_classes=5, mask_dir="masks")
    with pytest.raises(DataError, match=r"bad_size\.png.*2x1.*bad_size\.jpg.*3x3"):
        dataset[0]
    with pytest.raises(DataError, match=r"bad_value\.png' has values 9 outside the 5 classes"):
        dataset[1]
    (tmp_path / "images" / "train" / "orphan.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"missing mask '.*orphan\.png'"):
        MaskFolder(str(tmp_path), "train", num_classes=5, mask_dir="masks")
    with pytest.raises(DataError, match="data.num_classes is required"):
        build_seg_dataset(SegDataConfig(name="maskfolder", path=str(tmp_path)), "train")


def test_training_crops_pad_with_ignore_and_replay_from_their_position():
    cfg = SegDataConfig(img_size=32, scale=[32, 32], ratio_range=[0.5, 1.25], crop_size=40, num_samples=6)
    stream = StreamDataset(build_seg_dataset(cfg, "train"), SegTransform(cfg, train=True), seed=3)
    image, label = stream[17]
    assert image.shape == (3, 40, 40) and label.shape == (40, 40)
    assert (label == 255).any()  # rescaled by <= 1.25 of 32 px: always padded to 40
    again_image, again_label = stream[17]
    assert torch.equal(image, again_image) and torch.equal(label, again_label)
    assert sorted(stream.index_at(p) for p in range(6)) == list(range(6))  # one pass = each image once


def test_crop_redraws_until_no_class_dominates():
    label = torch.zeros(64, 64, dtype=torch.long)
    label[:, 32:] = 1  # a 32-wide crop at `left` holds left/32 of class 1

    def fractions(ratio):
        rng = np.random.default_rng(0)
        boxes = [random_crop_box(label, 32, rng, ratio, 255) for _ in range(20)]
        return [(label[t : t + h, x : x + w] == 1).float().mean().item() for t, x, h, w in boxes]

    assert all(0.25 < f < 0.75 for f in fractions(0.75))
    assert any(not 0.25 < f < 0.75 for f in fractions(1.0))  # unconstrained crops do go there
