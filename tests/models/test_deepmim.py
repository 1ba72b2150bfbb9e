"""The DeepMIM model: forward outputs, the loss over masked patches, targets outside the state dict,
configs refused, and the parameters no head reads."""

import pytest
import torch

from deepmim.config.loader import ConfigError
from deepmim.models import DeepMIM, random_masking
from tests.helpers.models import tiny_model_config


def test_forward_returns_total_per_head_and_mask(tiny_cfg):
    tiny_cfg.heads[0].weight = 0.5
    model = DeepMIM(tiny_cfg)
    noise = torch.rand(3, 16)
    out = model(torch.randn(3, 3, 16, 16), noise=noise)
    assert sorted(out.losses) == [2, 4]
    torch.testing.assert_close(out.loss, 0.5 * out.losses[2] + out.losses[4])
    assert torch.equal(out.mask, random_masking(3, 16, 0.75, torch.device("cpu"), noise=noise).mask)
    assert out.preds[2].shape == (3, 16, 4 * 4 * 3)


def test_loss_counts_masked_patches_only(tiny_cfg):
    model = DeepMIM(tiny_cfg)
    images = torch.randn(2, 3, 16, 16)
    out = model(images, noise=torch.rand(2, 16))
    target = model.target_of(4)(images, out.masking)
    per_patch = ((out.preds[4] - target) ** 2).mean(-1)
    expected = (per_patch * out.mask).sum() / out.mask.sum()
    torch.testing.assert_close(out.losses[4], expected)
    # a prediction that is perfect on masked patches and wrong on visible ones scores 0
    pred = torch.where(out.mask.bool().unsqueeze(-1), target, target + 100.0)
    assert model.target_of(4).loss(pred, target, out.mask).item() == 0.0


def test_targets_are_outside_state_dict_and_optimizer(tiny_cfg):
    model = DeepMIM(tiny_cfg)
    assert not any(k.startswith("targets") for k in model.state_dict())
    assert sorted(model.decoders) == ["2", "4"]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: setattr(c, "mask_ratio", 1.0), "mask_ratio"),
        (lambda c: setattr(c.heads[0], "block", 9), "outside 1..4"),
        (lambda c: setattr(c.heads[1], "block", 2), "supervised once"),
        (lambda c: setattr(c.heads[0], "decoder_heads", 3), "not divisible"),
        (lambda c: setattr(c, "target", {"name": "pixels"}), "unknown target"),
        (lambda c: setattr(c, "target", {"name": "pixel", "normpix": True}), "Did you mean 'norm_pix'"),
    ],
)
def test_bad_model_configs_are_refused(tiny_cfg, mutate, message):
    mutate(tiny_cfg)
    with pytest.raises(ConfigError, match=message):
        DeepMIM(tiny_cfg)


def test_unused_parameters_are_the_blocks_after_the_deepest_head_and_the_unread_norm():
    shallow = DeepMIM(tiny_model_config(heads=(2,)))
    names = shallow.unused_parameter_names()
    assert {n.split(".")[2] for n in names if n.startswith("encoder.blocks.")} == {"2", "3"}
    assert "encoder.norm.weight" in names and not any(n.startswith("encoder.blocks.1.") for n in names)
    # Confirm by backward: exactly these get no gradient.
    out = shallow(torch.randn(2, 3, 16, 16))
    out.loss.backward()
    no_grad = {n for n, p in shallow.named_parameters() if p.requires_grad and p.grad is None}
    assert no_grad == set(names)
    assert DeepMIM(tiny_model_config(heads=(2, 4))).unused_parameter_names() == []
