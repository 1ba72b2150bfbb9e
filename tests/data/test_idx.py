"""idx files (MNIST's format): plain and gzipped round trips, errors, the real Fashion-MNIST test split."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import torch

from deepmim.config.schema import DataConfig
from deepmim.data import DataError, IdxDataset, build_dataset, read_idx
from tests.helpers.data import write_idx


def test_idx_round_trip_plain_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5], dtype=np.uint8))
    write_idx(tmp_path / "t10k-images.idx3-ubyte", test_images)  # Kaggle-style name
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", np.array([9, 2, 6], dtype=np.uint8))

    train = IdxDataset(str(tmp_path), "train")
    assert len(train) == 5 and [train[i][1] for i in range(5)] == [3, 1, 4, 1, 5]
    image = train[2][0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8  # grey stays grey
    assert torch.equal(image[0], torch.from_numpy(train_images[2]))
    for split in ("val", "test"):
        test = IdxDataset(str(tmp_path), split)
        assert len(test) == 3 and test[0][1] == 9 and torch.equal(test[1][0][0], torch.from_numpy(test_images[1]))

    floats = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    write_idx(tmp_path / "floats.idx", floats, type_code=0x0D)
    assert np.array_equal(read_idx(str(tmp_path / "floats.idx")), floats)


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(str(tmp_path / "bad"))
    write_idx(tmp_path / "short", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataError, match="header"):
        read_idx(str(tmp_path / "short"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        IdxDataset(str(tmp_path), "train")
    with pytest.raises(DataError, match="does not exist"):
        IdxDataset(str(tmp_path / "missing"))


FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_test_split():
    ds = build_dataset(DataConfig(name="idx", path=FASHION, split="val"))
    assert len(ds) == 10_000 and ds[0][0].shape == (1, 28, 28)
    assert Counter(ds.targets) == {c: 1000 for c in range(10)}
