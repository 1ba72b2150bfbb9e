"""Frozen-feature evaluation: feature extraction + cache, weighted k-NN, per-layer linear probes, CLI."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from deepmim import create_model
from deepmim.analysis import features as feat_mod
from deepmim.analysis.features import extract_features, frozen_encoder
from deepmim.analysis.probes import build_probe_optimizer, knn_classify, LinearProbeHead, train_linear_probe
from deepmim.cli.main import main
from deepmim.config.schema import DataConfig, FeatureConfig, KnnConfig, LinearProbeConfig
from tests.conftest import tiny_model_config


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
    r = train_linear_probe(tx, ty, vx, vy, 10, dataclasses.replace(PROBE, optimizer=optimizer, lr=6.4 if optimizer == "lars" else 0.1))
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


# ---- features of a real (tiny, random) checkpoint -------------------------------------------------

@pytest.fixture
def tiny_ckpt(tmp_path):
    model = create_model(tiny_model_config())  # 4 blocks, 32 wide, 16 px, patch 4
    path = tmp_path / "tiny.pt"
    torch.save({"task": "pretrain", "model": model.state_dict(), "config": {"model": dataclasses.asdict(model.cfg)}},
               path)
    return path


def tiny_data(n: int = 20) -> DataConfig:
    return DataConfig(name="embedded", img_size=16, num_samples=n)


def test_features_shapes_and_norm(tiny_ckpt, tmp_path):
    fc = FeatureConfig(cache_dir=str(tmp_path / "cache"), progress=False, batch_size=8, precision="fp32")
    for pool in ("cls", "avg"):
        f = extract_features(tiny_ckpt, tiny_data(), "train", dataclasses.replace(fc, pool=pool))
        assert sorted(f.blocks) == [1, 2, 3, 4]
        assert all(v.shape == (20, 32) and v.dtype == torch.float32 for v in f.blocks.values())
        assert f.labels.tolist() == [i % 10 for i in range(20)]
    # the last block is read after the encoder's final norm (MAE's linprobe), the others raw
    encoder = frozen_encoder(tiny_ckpt)
    f = extract_features(tiny_ckpt, tiny_data(), "val", dataclasses.replace(fc, cache_dir=None, pool="cls"),
                         encoder=encoder)
    from deepmim.data import build_dataset, build_eval_transform
    ds = build_dataset(tiny_data(), "val")
    t = build_eval_transform(16, DataConfig().mean, DataConfig().std)
    images = torch.stack([t(ds[i][0]) for i in range(3)])
    with torch.no_grad():
        taps, _ = encoder(images, taps=[2, 4])
        assert torch.allclose(f.blocks[4][:3], encoder.norm(taps[4])[:, 0], atol=1e-5)
        assert torch.allclose(f.blocks[2][:3], taps[2][:, 0], atol=1e-5)


def test_feature_cache_hit_runs_no_encoder(tiny_ckpt, tmp_path, monkeypatch):
    calls = []
    real = feat_mod.run_encoder

    def counting(encoder, loader, blocks, *a, **k):
        calls.append(list(blocks))
        return real(encoder, loader, blocks, *a, **k)

    monkeypatch.setattr(feat_mod, "run_encoder", counting)
    fc = FeatureConfig(cache_dir=str(tmp_path / "cache"), progress=False, blocks=[2, 4])
    first = extract_features(tiny_ckpt, tiny_data(), "train", fc)
    second = extract_features(tiny_ckpt, tiny_data(), "train", fc)
    assert calls == [[2, 4]]
    assert all(torch.equal(first.blocks[b], second.blocks[b]) for b in (2, 4))
    extract_features(tiny_ckpt, tiny_data(), "train", fc, blocks=[4])  # a subset: still a hit
    assert calls == [[2, 4]]
    extract_features(tiny_ckpt, tiny_data(), "train", fc, blocks=[1, 2])  # only block 1 is new
    assert calls == [[2, 4], [1]]
    extract_features(tiny_ckpt, tiny_data(), "val", fc)  # another split, another key
    extract_features(tiny_ckpt, tiny_data(n=30), "train", fc)  # another dataset identity
    extract_features(tiny_ckpt, tiny_data(), "train", dataclasses.replace(fc, pool="cls"))  # the other pooling
    assert len(calls) == 5
    st = tiny_ckpt.stat()  # a rewritten checkpoint (new mtime) invalidates the cache
    os.utime(tiny_ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    extract_features(tiny_ckpt, tiny_data(), "train", fc)
    assert len(calls) == 6


def test_bad_blocks_and_missing_checkpoint(tiny_ckpt, tmp_path):
    fc = FeatureConfig(cache_dir=None, progress=False)
    with pytest.raises(ValueError, match="1..4"):
        extract_features(tiny_ckpt, tiny_data(), "train", fc, blocks=[5])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        extract_features(tmp_path / "nope.pt", tiny_data(), "train", fc)


# ---- CLI end to end -----------------------------------------------------------------------------

def _common(tmp_path):  # tiny_ckpt records no training data: the command is told which
    return [f"features.cache_dir={tmp_path / 'cache'}", "data.name=embedded", "data.img_size=16",
            "data.num_samples=40", "features.progress=false"]


def test_cli_probe_layers_end_to_end(tiny_ckpt, tmp_path, capsys):
    other = tmp_path / "b" / "tiny.pt"
    other.parent.mkdir()
    other.write_bytes(tiny_ckpt.read_bytes())
    out = tmp_path / "layers"
    rc = main(["probe-layers", str(tiny_ckpt), str(other), "--out", str(out), "probe.epochs=2",
               "probe.batch_size=16", *_common(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "block" in text and "b/tiny.pt" in text
    report = json.loads((out / "layers.json").read_text())
    names = sorted(report["results"])  # colliding file names get their parent folder
    assert len(names) == 2 and "b/tiny.pt" in names and names[1].endswith("/tiny.pt")
    assert all(set(report["results"][n]) == {"1", "2", "3", "4"} for n in names)
    rows = list(csv.DictReader(open(out / "layers.csv")))
    assert len(rows) == 8 and all(0.0 <= float(r["top1"]) <= 1.0 for r in rows)
    assert (out / "layers.png").stat().st_size > 1000
    # --blocks picks a subset
    rc = main(["probe-layers", str(tiny_ckpt), "--blocks", "2,4", "--out", str(out), "probe.epochs=1",
               *_common(tmp_path)])
    assert rc == 0
    assert set(json.loads((out / "layers.json").read_text())["results"]["tiny.pt"]) == {"2", "4"}
    assert "features.blocks" not in capsys.readouterr().err


def test_cli_knn_end_to_end(tiny_ckpt, tmp_path, capsys):
    rc = main(["knn", str(tiny_ckpt), "knn.k=5", "knn.temperature=0.1", "--out", str(tmp_path / "k"),
               *_common(tmp_path)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "block 4: top-1" in text and "top-5" in text
    assert json.loads((tmp_path / "k" / "knn.json").read_text())["results"]["4"]["top1"] <= 1.0


def test_cli_clear_errors(tiny_ckpt, tmp_path, capsys):
    rc = main(["knn", str(tiny_ckpt), "num_classes=5", *_common(tmp_path)])
    assert rc == 2 and "class-count mismatch" in capsys.readouterr().err
    rc = main(["probe-layers", str(tmp_path / "missing.pt"), *_common(tmp_path)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["probe-layers", str(tiny_ckpt), "probe.nope=1"])
    assert rc == 2 and "nope" in capsys.readouterr().err


@pytest.mark.parametrize("augment", [True, False])
def test_cli_linprobe_end_to_end(tiny_ckpt, tmp_path, capsys, augment):
    out = tmp_path / "lp"
    rc = main(["linprobe", str(tiny_ckpt), "--out", str(out), f"augment={str(augment).lower()}", "probe.epochs=2",
               "probe.warmup_epochs=1", "probe.batch_size=16", *_common(tmp_path)])
    assert rc == 0
    assert ("augmented" if augment else "cached features") in capsys.readouterr().out
    report = json.loads((out / "linprobe.json").read_text())
    assert report["block"] == 4 and 0.0 <= report["results"]["top1"] <= 1.0
    state = torch.load(out / "probe-head.pt", weights_only=True)
    assert state["head"]["head.weight"].shape == (10, 32) and "bn.running_mean" in state["head"]
    assert "bn.weight" not in state["head"]  # BatchNorm without affine


def test_linprobe_augmented_is_deterministic(tiny_ckpt, tmp_path):
    from deepmim.config.schema import LinprobeConfig
    from deepmim.tasks.linprobe import run_linprobe

    cfg = LinprobeConfig(data=tiny_data(40), features=FeatureConfig(cache_dir=None, progress=False),
                         probe=LinearProbeConfig(epochs=3, warmup_epochs=1, batch_size=16))
    a = run_linprobe(str(tiny_ckpt), cfg, str(tmp_path / "a"))
    b = run_linprobe(str(tiny_ckpt), cfg, str(tmp_path / "b"))
    assert a["top1"] == b["top1"] and a["train_loss"] == b["train_loss"]


def test_config_less_file_needs_a_preset(tmp_path, capsys):
    """Weights without a deepmim config (MAE / authors' layout: just {'model': state}) probe with
    features.preset=NAME; without it the error says so."""
    model = create_model("mae_vit_micro_p4_32")
    path = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict()}, path)
    common = [f"features.cache_dir={tmp_path / 'cache'}", "data.name=embedded", "data.num_samples=20",
              "features.progress=false"]
    assert main(["knn", str(path), "knn.k=3", *common]) == 2
    assert "preset" in capsys.readouterr().err
    assert main(["knn", str(path), "knn.k=3", "features.preset=mae_vit_micro_p4_32", *common]) == 0
    assert "block 6: top-1" in capsys.readouterr().out


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (apt-get install)")
def test_the_default_linear_probe_reads_raw_fashion_mnist_pixels_as_a_linear_classifier_does():
    """A known answer: a linear classifier on raw Fashion-MNIST pixels scores about 84% (Zalando's benchmark:
    logistic regression 84.2%). The default probe (BN + linear, LARS, 50 epochs) on the first 10k training
    images measured 83.0% on the 10k test images (84.0% with all 60k); far off would mean a broken probe."""
    from deepmim.data import read_idx

    def split(prefix):
        x = torch.from_numpy(read_idx(str(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz"))).float().flatten(1)
        y = torch.from_numpy(read_idx(str(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz"))).long()
        return x / 255, y

    (x, y), (xt, yt) = split("train"), split("t10k")
    result = train_linear_probe(x[:10000], y[:10000], xt, yt, 10, LinearProbeConfig())
    assert 0.81 < result["top1"] < 0.86


def test_probe_layers_vs_random_probes_the_untrained_encoder_the_run_started_from(tiny_ckpt, tmp_path, capsys):
    """--vs-random writes the run's initial encoder (same architecture, same seed: the weights pre-training
    started from) beside the results and prints best block against best block from the recorded numbers."""
    from deepmim.checkpoint import read_checkpoint
    from deepmim.models.encoder import MaskedViTEncoder

    out = tmp_path / "probe"
    assert main(["probe-layers", str(tiny_ckpt), "--vs-random", "--out", str(out), "data.name=embedded",
                 "data.num_samples=64",
                 "data.img_size=16", "probe.epochs=2", "probe.batch_size=16", "features.cache_dir=",
                 "features.progress=false"]) == 0
    ckpt = read_checkpoint(tiny_ckpt)
    torch.manual_seed(int(ckpt.config.get("train", {}).get("seed", 0)))
    expected = MaskedViTEncoder(ckpt.model_config().encoder).state_dict()
    written = read_checkpoint(out / "random-init.pt").model_state
    assert all(torch.equal(written[f"encoder.{k}"], v) for k, v in expected.items())
    report = json.loads((out / "layers.json").read_text())
    trained, untrained = (report["results"][n] for n in report["checkpoints"])
    best_t, best_r = max(r["top1"] for r in trained.values()), max(r["top1"] for r in untrained.values())
    line = capsys.readouterr().out.strip().splitlines()[-2]
    assert line == report["comparison"]
    assert f"{100 * best_t:.1f}%" in line and f"{100 * best_r:.1f}%" in line
    assert f"{100 * (best_t - best_r):+.1f} points" in line
