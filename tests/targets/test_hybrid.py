"""The hybrid target: the pixel target at alpha 1, the frozen model's reconstruction at alpha 0, one
shared frozen model, mismatched and config-less frozen files."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deepmim import create_model
from deepmim.config.loader import ConfigError, to_dict
from deepmim.models import CheckpointError, DeepMIM
from deepmim.targets import build_target
from tests.helpers.models import perturb_, tiny_model_config


@pytest.fixture
def frozen_path(tmp_path):
    """A 'pre-trained' tiny deepmim (16px, patch 4, heads on blocks 2 and 4) saved like the trainer."""
    torch.manual_seed(7)
    cfg = tiny_model_config()
    frozen = perturb_(DeepMIM(cfg)).eval()
    path = tmp_path / "frozen.pt"
    torch.save({"task": "pretrain", "model": frozen.state_dict(), "config": {"model": to_dict(cfg)}, "step": 10}, path)
    return path, frozen


def student_masking(noise):
    student = DeepMIM(tiny_model_config())
    _, masking = student.encoder(torch.zeros(noise.shape[0], 3, 16, 16), 0.75, noise)
    return masking


def test_hybrid_alpha_one_is_the_pixel_target(frozen_path):
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    masking = student_masking(noise)
    hybrid = build_target({"name": "hybrid", "path": str(frozen_path[0]), "alpha": 1.0}, 4, 3)
    pixel = build_target({"name": "pixel", "norm_pix": True}, 4, 3)
    torch.testing.assert_close(hybrid(images, masking), pixel(images, masking), rtol=0, atol=0)


def test_hybrid_alpha_zero_is_the_frozen_reconstruction_under_the_students_mask(frozen_path):
    path, frozen = frozen_path
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    masking = student_masking(noise)
    with torch.no_grad():
        reference = frozen(images, noise=noise)  # the frozen model's own forward with the student's noise
    torch.testing.assert_close(reference.mask, masking.mask)
    hybrid = build_target({"name": "hybrid", "path": str(path), "alpha": 0.0}, 4, 3)
    torch.testing.assert_close(hybrid(images, masking), reference.preds[4], rtol=1e-5, atol=1e-6)
    third = build_target({"name": "hybrid", "path": str(path), "alpha": 1 / 3}, 4, 3)
    pixels = build_target({"name": "pixel"}, 4, 3)(images, masking)
    torch.testing.assert_close(third(images, masking), pixels / 3 + reference.preds[4] * 2 / 3, rtol=1e-5, atol=1e-6)
    other = student_masking(torch.rand(2, 16))  # another mask, another reconstruction
    assert (hybrid(images, other) - reference.preds[4]).abs().max() > 1e-3


def test_hybrid_heads_share_one_frozen_model_and_one_forward(frozen_path):
    path, frozen = frozen_path
    spec = {"name": "hybrid", "path": str(path)}
    cfg = tiny_model_config(heads=(1, 2, 3, 4))
    for head, alpha in zip(cfg.heads[:3], (0.0, 1 / 3, 2 / 3)):  # the paper's schedule; last head raw pixels
        head.target = {**spec, "alpha": alpha}
    student = DeepMIM(cfg)
    hybrids = [student.target_of(b) for b in (1, 2, 3)]
    assert hybrids[0].frozen is hybrids[1].frozen is hybrids[2].frozen
    assert not any(k.startswith("targets") or "frozen" in k for k in student.state_dict())
    calls = []
    hybrids[0].frozen.model.decoders["4"].register_forward_hook(lambda *a: calls.append(1))
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    out = student(images, noise=noise)
    out.loss.backward()
    assert len(calls) == 1 and torch.isfinite(out.loss)
    with torch.no_grad():
        expected = frozen(images, noise=noise).preds[4]
    torch.testing.assert_close(hybrids[0](images, out.masking), expected, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for t in hybrids for p in t.parameters())
    assert not hybrids[0].frozen.training and not student.target_of(1).frozen.model.training


def test_hybrid_refuses_mismatched_frozen_models(frozen_path, tmp_path):
    path, frozen = frozen_path
    with pytest.raises(ConfigError, match="must be"):
        build_target({"name": "hybrid", "path": str(path), "norm_pix": False}, 4, 3)
    with pytest.raises(ConfigError, match="patch"):
        build_target({"name": "hybrid", "path": str(path)}, 8, 3)
    with pytest.raises(ConfigError, match="alpha"):
        build_target({"name": "hybrid", "path": str(path), "alpha": 1.5}, 4, 3)
    cfg = dataclasses.replace(tiny_model_config(), target={"name": "hog", "cell_size": 4})
    torch.save(
        {"task": "pretrain", "model": DeepMIM(cfg).state_dict(), "config": {"model": to_dict(cfg)}}, tmp_path / "hog.pt"
    )
    with pytest.raises(ConfigError, match="not pixels"):
        build_target({"name": "hybrid", "path": str(tmp_path / "hog.pt")}, 4, 3)
    torch.save({"model": frozen.state_dict()}, tmp_path / "noconfig.pt")
    with pytest.raises(CheckpointError, match="no deepmim config.*preset"):
        build_target({"name": "hybrid", "path": str(tmp_path / "noconfig.pt")}, 4, 3)


def test_hybrid_reads_a_config_less_mae_checkpoint_with_a_preset(tmp_path):
    """MAE's released *_full.pth layout (decoder_embed, decoder_blocks, ...) plus `preset` naming the model."""
    mae = perturb_(create_model("mae_vit_micro_p4_32")).eval()
    parts = {
        "embed": "decoder_embed",
        "blocks": "decoder_blocks",
        "norm": "decoder_norm",
        "pred": "decoder_pred",
        "mask_token": "mask_token",
        "pos_embed": "decoder_pos_embed",
    }
    state = {}
    for key, value in mae.state_dict().items():
        if key.startswith("encoder."):
            state[key[len("encoder.") :]] = value
        else:  # decoders.6.<part>...
            part, _, rest = key[len("decoders.6.") :].partition(".")
            state[parts[part] + ("." + rest if rest else "")] = value
    torch.save({"model": state}, tmp_path / "mae_full.pth")
    hybrid = build_target(
        {"name": "hybrid", "path": str(tmp_path / "mae_full.pth"), "preset": "mae_vit_micro_p4_32"}, 4, 3
    )
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        reference = mae(images, noise=noise)
    torch.testing.assert_close(hybrid(images, reference.masking), reference.preds[6], rtol=1e-5, atol=1e-5)
