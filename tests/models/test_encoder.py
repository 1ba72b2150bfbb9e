"""The masked ViT encoder: timm's state-dict layout and features, taps on requested blocks, the final
norm, fused and math attention."""

import timm
import torch

from deepmim.models import DeepMIM


def test_encoder_state_dict_is_timm_vit_and_features_equal(tiny_cfg):
    model = DeepMIM(tiny_cfg).eval()
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=0
    ).eval()
    ours = model.encoder.state_dict()
    theirs = vit.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    vit.load_state_dict(ours, strict=True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model.encoder.forward_features(x), vit.forward_features(x), rtol=1e-5, atol=1e-5)


def test_taps_return_requested_blocks_on_visible_tokens(tiny_cfg):
    model = DeepMIM(tiny_cfg)
    taps, masking = model.encoder(torch.randn(2, 3, 16, 16), mask_ratio=0.75, taps=[1, 3])
    assert sorted(taps) == [1, 3]
    assert taps[1].shape == (2, 1 + 4, 32)  # cls + 25% of 16 patches


def test_final_norm_only_on_last_block_by_default(tiny_cfg):
    model = DeepMIM(tiny_cfg)
    calls = []
    model.encoder.norm.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(1, 3, 16, 16))
    assert len(calls) == 1
    tiny_cfg.heads[0].final_norm = True
    model = DeepMIM(tiny_cfg)
    calls.clear()
    model.encoder.norm.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(1, 3, 16, 16))
    assert len(calls) == 2


def test_fused_and_math_attention_agree(tiny_cfg):
    model = DeepMIM(tiny_cfg)
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    model.set_fused_attn(True)
    fused = model(images, noise=noise).loss
    model.set_fused_attn(False)
    math_ = model(images, noise=noise).loss
    torch.testing.assert_close(fused, math_, rtol=1e-5, atol=1e-6)
