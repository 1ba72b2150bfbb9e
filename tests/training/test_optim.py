"""The optimiser: lr scaled with the effective batch, no weight decay on biases, norms, tokens and
position tables."""

import pytest
import torch

from deepmim.config.schema import OptimConfig
from deepmim.models import DeepMIM
from deepmim.training.optim import build_adamw, scaled_lr
from tests.helpers.models import tiny_model_config


def test_lr_scales_with_effective_batch():
    assert scaled_lr(OptimConfig(base_lr=1.5e-4), 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(OptimConfig(base_lr=1.5e-4, lr=1e-3), 4096) == 1e-3


def test_weight_decay_skips_biases_norms_tokens_and_pos_embed():
    model = DeepMIM(tiny_model_config())
    opt = build_adamw(model, OptimConfig(weight_decay=0.05), lr=1e-3, device=torch.device("cpu"))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[i] for i in decayed}
    all_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.blocks.0.attn.qkv.weight" in decayed_names
    assert "decoders.2.embed.weight" in decayed_names
    for name in all_trainable - decayed_names:
        assert name.endswith(("bias", "cls_token", "mask_token")) or ".norm" in name, name
    assert not any(n.endswith(("bias", "cls_token", "mask_token")) for n in decayed_names)
    assert not any(n.startswith("encoder.pos_embed") or ".pos_embed" in n for n in decayed_names | all_trainable)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
