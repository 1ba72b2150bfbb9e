"""The embedded shapes data set: reproducible per index and seed, even classes, learnable from shape only."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from deepmim.data import EmbeddedShapes


def test_embedded_items_are_reproducible_per_index_and_seed():
    a, b = EmbeddedShapes(100, 32, seed=0), EmbeddedShapes(100, 32, seed=0)
    forward = [a[i][0].numpy().tobytes() for i in range(20)]
    backward = [b[i][0].numpy().tobytes() for i in reversed(range(20))][::-1]
    assert forward == backward
    assert a[7][1] == b[7][1]
    other_seed = EmbeddedShapes(100, 32, seed=1)
    other_split = EmbeddedShapes(100, 32, split="val", seed=0)
    for i in range(20):
        assert not torch.equal(a[i][0], other_seed[i][0])
        assert not torch.equal(a[i][0], other_split[i][0])
    assert torch.equal(a[-1][0], a[99][0])
    with pytest.raises(IndexError):
        a[100]


@pytest.mark.parametrize("size", [28, 32, 64])
def test_embedded_shapes_and_dtypes(size):
    ds = EmbeddedShapes(20, img_size=size)
    for i in range(10):
        image, label = ds[i]
        mask = ds.mask(i)
        assert image.shape == (3, size, size) and image.dtype == torch.uint8
        assert mask.shape == (size, size) and mask.dtype == torch.int64
        assert 0 <= label < 10


def test_embedded_labels_cover_all_classes_evenly():
    ds = EmbeddedShapes(10_000, 32)
    assert len(ds.classes) == 10 and len(set(ds.classes)) == 10
    indices = np.random.default_rng(0).choice(len(ds), 2000, replace=False)
    counts = Counter(ds[int(i)][1] for i in indices)
    assert sorted(counts) == list(range(10))
    assert all(150 <= c <= 250 for c in counts.values()), counts


def test_embedded_mask_matches_the_image():
    ds = EmbeddedShapes(300, 32)
    for i in range(300):
        image, label, mask = ds.get_with_mask(i)
        assert torch.equal(image, ds[i][0]) and torch.equal(mask, ds.mask(i))
        assert set(mask.unique().tolist()) == {0, label + 1}, f"item {i}: shape missing or wrong id"
        inside = image[:, mask > 0].float()
        outside = image[:, mask == 0].float()
        gap = (inside.mean(1) - outside.mean(1)).norm()
        spread = max(inside.std(1).max(), outside.std(1).max())
        # Shape and background colours are far apart compared to texture/noise within each.
        assert gap > 40 and gap > 2.5 * spread, (i, gap, spread)


def _edge_orientation_features(images: torch.Tensor) -> np.ndarray:
    """Colour-free HOG-like features: magnitude-weighted histogram of edge orientations."""
    gray = images.float().mean(1)
    gx = gray[:, 1:-1, 2:] - gray[:, 1:-1, :-2]
    gy = gray[:, 2:, 1:-1] - gray[:, :-2, 1:-1]
    magnitude = (gx**2 + gy**2).sqrt().flatten(1)
    orientation = (torch.atan2(gy, gx) % np.pi).flatten(1)  # polarity-free: fg may be darker
    bins = (orientation / np.pi * 12).long().clamp(max=11)
    hist = torch.zeros(len(gray), 12).scatter_add_(1, bins, magnitude)
    hist = hist / magnitude.sum(1, keepdim=True)
    strong = (magnitude > 0.5 * magnitude.amax(1, keepdim=True)).float().mean(1, keepdim=True)
    return torch.cat([hist, hist**2, strong], 1).numpy()


def _ridge_accuracy(train_x, train_y, test_x, test_y) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.c_[(train_x - mean) / std, np.ones(len(train_x))]
    weights = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ np.eye(10)[train_y])
    scores = np.c_[(test_x - mean) / std, np.ones(len(test_x))] @ weights
    return float((scores.argmax(1) == test_y).mean())


def test_embedded_classes_are_learnable_from_shape_but_not_from_pixel_statistics():
    train, test = EmbeddedShapes(2000, 32, "train"), EmbeddedShapes(600, 32, "val")
    train_x = torch.stack([train[i][0] for i in range(len(train))])
    test_x = torch.stack([test[i][0] for i in range(len(test))])
    train_y, test_y = np.arange(len(train)) % 10, np.arange(len(test)) % 10

    shape_acc = _ridge_accuracy(
        _edge_orientation_features(train_x), train_y, _edge_orientation_features(test_x), test_y
    )

    def colour_stats(x):
        return torch.cat([x.float().mean((2, 3)), x.float().std((2, 3))], 1).numpy()

    colour_acc = _ridge_accuracy(colour_stats(train_x), train_y, colour_stats(test_x), test_y)
    assert shape_acc > 0.6, shape_acc  # chance is 0.1
    assert colour_acc < 0.3, colour_acc
