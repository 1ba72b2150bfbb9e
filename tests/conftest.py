"""Fixtures every test module may use: the seed and cache folder set for each test, tiny
checkpoints and a finished tiny run (module-scoped where a test module shares one)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from deepmim import create_model
from deepmim.cli.main import main
from deepmim.config.schema import ModelConfig
from tests.helpers.models import save_tiny_pretrained, tiny_model_config
from tests.helpers.runs import TINY


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return tiny_model_config()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _cache_in_the_test_folder(tmp_path_factory, monkeypatch):
    """deepmim's cache directory (features.cache_dir=auto) inside pytest's folder, not the user's."""
    if "DEEPMIM_CACHE" not in __import__("os").environ:
        monkeypatch.setenv("DEEPMIM_CACHE", str(tmp_path_factory.getbasetemp() / "deepmim-cache"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return save_tiny_pretrained(tmp_path_factory.mktemp("pre") / "checkpoint-last.pt")


@pytest.fixture
def tiny_ckpt(tmp_path):
    model = create_model(tiny_model_config())  # 4 blocks, 32 wide, 16 px, patch 4
    path = tmp_path / "tiny.pt"
    torch.save(
        {"task": "pretrain", "model": model.state_dict(), "config": {"model": dataclasses.asdict(model.cfg)}}, path
    )
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    assert main(["pretrain", *TINY, f"train.output_dir={out}"]) == 0
    return out
