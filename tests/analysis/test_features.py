"""Feature extraction: shapes, normalisation, the feature cache (in deepmim's one XDG-style cache
directory, never beside the data) and bf16 features within bf16 tolerance of fp32."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from deepmim.analysis import features as feat_mod
from deepmim.analysis.features import extract_features, frozen_encoder, resolve_cache_dir, user_cache_dir
from deepmim.cli.main import main
from deepmim.config.schema import DataConfig, FeatureConfig
from tests.helpers.data import save_checkpoint_with_data, tiny_data
from tests.helpers.models import save_tiny_pretrained


def files_under(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_knn_writes_its_features_to_the_cache_directory_only(tmp_path, monkeypatch, capsys):
    ckpt = save_checkpoint_with_data(
        tmp_path / "pre" / "checkpoint-last.pt", DataConfig(name="embedded", img_size=16, num_samples=20)
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("DEEPMIM_CACHE", str(tmp_path / "cache"))
    assert FeatureConfig().cache_dir == "auto"
    assert main(["knn", str(ckpt), "knn.k=3", "features.progress=false"]) == 0
    assert list(work.iterdir()) == []  # nothing in the working directory, no runs/feature_cache/ there
    cached = files_under(tmp_path / "cache")
    assert len(cached) == 2 and all(f.startswith("features/checkpoint-last-") for f in cached)


def test_the_cache_directory_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPMIM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "deepmim"
    assert resolve_cache_dir("auto") == tmp_path / "xdg" / "deepmim" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "deepmim"
    monkeypatch.setenv("DEEPMIM_CACHE", str(tmp_path / "mine"))
    assert resolve_cache_dir("auto") == tmp_path / "mine" / "features"
    assert resolve_cache_dir("") is None and resolve_cache_dir(None) is None
    assert resolve_cache_dir(str(tmp_path / "here")) == tmp_path / "here"


def test_bf16_features_are_within_bf16_tolerance_of_fp32(tmp_path):
    from deepmim.analysis.features import extract_features

    ckpt = save_tiny_pretrained(tmp_path / "tiny.pt")
    data = DataConfig(name="embedded", img_size=16, num_samples=24)
    fc = FeatureConfig(cache_dir=str(tmp_path / "cache"), progress=False, batch_size=8, blocks=[2, 4])
    fp32 = extract_features(ckpt, data, "val", dataclasses.replace(fc, precision="fp32"))
    bf16 = extract_features(ckpt, data, "val", dataclasses.replace(fc, precision="bf16"))
    for block in (2, 4):
        a, b = fp32.blocks[block], bf16.blocks[block]
        assert b.dtype == torch.float32
        rel = (a - b).norm() / a.norm()
        assert 0 < rel < 2e-2, rel  # different (bf16 did run), but close
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one cache file per precision


def test_features_shapes_and_norm(tiny_ckpt, tmp_path):
    fc = FeatureConfig(cache_dir=str(tmp_path / "cache"), progress=False, batch_size=8, precision="fp32")
    for pool in ("cls", "avg"):
        f = extract_features(tiny_ckpt, tiny_data(), "train", dataclasses.replace(fc, pool=pool))
        assert sorted(f.blocks) == [1, 2, 3, 4]
        assert all(v.shape == (20, 32) and v.dtype == torch.float32 for v in f.blocks.values())
        assert f.labels.tolist() == [i % 10 for i in range(20)]
    # the last block is read after the encoder's final norm (MAE's linprobe), the others raw
    encoder = frozen_encoder(tiny_ckpt)
    f = extract_features(
        tiny_ckpt, tiny_data(), "val", dataclasses.replace(fc, cache_dir=None, pool="cls"), encoder=encoder
    )
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
