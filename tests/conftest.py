"""Shared tiny models and configs: everything here runs in well under a second on 2 cores."""
from __future__ import annotations

import pytest
import torch

from deepmim.config.schema import EncoderConfig, HeadConfig, ModelConfig


def tiny_model_config(img_size: int = 16, heads=(2, 4), norm_pix: bool = True) -> ModelConfig:
    """A 4-block, 32-wide ViT on 16x16 images (patch 4: 16 patches) with 1-block decoders."""
    return ModelConfig(
        encoder=EncoderConfig(img_size=img_size, patch_size=4, embed_dim=32, depth=4, num_heads=2),
        heads=[HeadConfig(block=b, decoder_dim=32, decoder_depth=1, decoder_heads=2) for b in heads],
        target={"name": "pixel", "norm_pix": norm_pix},
    )


def save_tiny_pretrained(path):
    """A randomly initialised tiny DeepMIM checkpoint (model + config), as `deepmim pretrain` writes one."""
    import dataclasses

    from deepmim.models import DeepMIM

    model = DeepMIM(tiny_model_config())
    torch.save({"task": "pretrain", "model": model.state_dict(), "config": {"model": dataclasses.asdict(model.cfg)}},
               path)
    return path


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
