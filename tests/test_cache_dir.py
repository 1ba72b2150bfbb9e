"""Nothing is written outside the output folder but deepmim's one cache directory (XDG-style, overridable)."""
from __future__ import annotations

import os
from pathlib import Path

from deepmim.analysis.features import resolve_cache_dir, user_cache_dir
from deepmim.cli.main import main
from deepmim.config.schema import DataConfig, FeatureConfig
from tests.test_scored_data import save_checkpoint_with_data


def files_under(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_knn_writes_its_features_to_the_cache_directory_only(tmp_path, monkeypatch, capsys):
    ckpt = save_checkpoint_with_data(tmp_path / "pre" / "checkpoint-last.pt",
                                     DataConfig(name="embedded", img_size=16, num_samples=20))
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
