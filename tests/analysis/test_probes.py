"""Linear probes and weighted k-NN on given features: separable and random labels, LARS groups,
the warm-up warning."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deepmim.analysis.probes import LinearProbeHead, build_probe_optimizer, knn_classify, train_linear_probe
from deepmim.config.schema import KnnConfig, LinearProbeConfig


def separable(n_per_class: int, num_classes: int = 10, dim: int = 32, seed: int = 0, noise: float = 0.3):
    """Gaussian blobs around random, well separated class centres (plus a large shared offset and scale
    so that the probe's BatchNorm matters)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 2
    y = torch.arange(num_classes).repeat(n_per_class)
    x = centres[y] + noise * torch.randn(len(y), dim, generator=g)
    return x * 5 + 3, y


def random_labels(x: torch.Tensor, num_classes: int = 10, seed: int = 1):
    return torch.randint(0, num_classes, (x.shape[0],), generator=torch.Generator().manual_seed(seed))


PROBE = LinearProbeConfig(epochs=10, batch_size=64, warmup_epochs=1, lr=6.4)  # 60 steps


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_linear_probe_separable_features(optimizer):
    tx, ty = separable(40, seed=0)
    vx, vy = separable(20, seed=1)
    r = train_linear_probe(
        tx, ty, vx, vy, 10, dataclasses.replace(PROBE, optimizer=optimizer, lr=6.4 if optimizer == "lars" else 0.1)
    )
    assert r["top1"] > 0.95 and r["top5"] >= r["top1"]


def test_linear_probe_random_labels_near_chance():
    tx, _ = separable(40, seed=0)
    vx, _ = separable(40, seed=1)
    r = train_linear_probe(tx, random_labels(tx, seed=2), vx, random_labels(vx, seed=3), 10, PROBE)
    assert r["top1"] < 0.22  # chance 0.10 with 400 val samples


def test_lars_groups_adapt_weights_not_bias():
    head = LinearProbeHead(8, 3)
    opt = build_probe_optimizer(head, LinearProbeConfig(weight_decay=1e-4), lr=0.1)
    weight_group, bias_group = opt.param_groups
    assert weight_group["always_adapt"] and weight_group["weight_decay"] == 1e-4
    assert not bias_group["always_adapt"] and bias_group["weight_decay"] == 0.0
    assert not head.bn.affine


def test_knn_separable_and_random():
    tx, ty = separable(30, seed=0)
    vx, vy = separable(20, seed=1)
    r = knn_classify(tx, ty, vx, vy, 10, KnnConfig(k=10, temperature=0.07))
    assert r["top1"] > 0.99 and r["top5"] > 0.99
    r = knn_classify(tx, random_labels(tx, seed=2), vx, random_labels(vx, seed=3), 10, KnnConfig(k=10))
    assert r["top1"] < 0.22
    # fewer than 5 classes: top-1 only; k larger than the training set is clipped
    r = knn_classify(tx[:6], ty[:6] % 2, vx[:4], vy[:4] % 2, 2, KnnConfig(k=50))
    assert set(r) == {"top1"}


def test_knn_weighting_prefers_close_neighbour():
    # one very close neighbour of class 1 outweighs two far ones of class 0 at low temperature
    train = torch.tensor([[1.0, 0.05], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_classify(train, labels, test, torch.tensor([1]), 2, KnnConfig(k=3, temperature=0.07))["top1"] == 1.0


def test_the_probe_warns_when_its_warm_up_outlasts_it(caplog):
    import logging

    from deepmim.analysis.probes import train_linear_probe
    from deepmim.config.schema import LinearProbeConfig

    x, y = torch.randn(16, 4), torch.arange(16) % 2
    with caplog.at_level(logging.WARNING, logger="deepmim"):
        train_linear_probe(x, y, x, y, 2, LinearProbeConfig(epochs=2, warmup_epochs=10, batch_size=8))
    assert "probe.warmup_epochs=10 is longer than probe.epochs=2" in caplog.text
