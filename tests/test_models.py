import numpy as np
import pytest
import timm
import torch

from deepmim import create_model
from deepmim.config.loader import ConfigError
from deepmim.models import DeepMIM, random_masking
from deepmim.models.decoder import MaskedDecoder
from deepmim.models.pos_embed import sincos_pos_embed
from deepmim.models.presets import extra_blocks, preset_config
from deepmim.targets import build_target, patchify, unpatchify


# ------------------------------------------------------------------ masking

def test_masking_keeps_exact_count_per_sample():
    m = random_masking(5, 49, 0.75, torch.device("cpu"))
    keep = int(49 * 0.25)
    assert m.ids_keep.shape == (5, keep)
    assert torch.equal(m.mask.sum(1), torch.full((5,), 49.0 - keep))
    # every sample draws its own mask
    assert len({tuple(row.tolist()) for row in m.mask}) == 5
    # ids_restore inverts the shuffle: visible ids are exactly the zeros of the mask
    for n in range(5):
        assert set(m.ids_keep[n].tolist()) == set(torch.nonzero(m.mask[n] == 0).flatten().tolist())


def test_masking_honours_noise_smallest_kept():
    noise = torch.rand(3, 16)
    m = random_masking(3, 16, 0.75, torch.device("cpu"), noise=noise)
    expected = torch.argsort(noise, dim=1)[:, :4]
    assert torch.equal(m.ids_keep, expected)
    again = random_masking(3, 16, 0.75, torch.device("cpu"), noise=noise.clone())
    assert torch.equal(again.mask, m.mask)


def test_masking_rejects_wrong_noise_shape():
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(2, 16, 0.75, torch.device("cpu"), noise=torch.rand(2, 15))


# ------------------------------------------------------------------ position embedding

def _mae_sincos_numpy(dim, grid):
    """MAE's get_2d_sincos_pos_embed, written out independently."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


@pytest.mark.parametrize("dim,grid", [(32, 4), (768, 14), (512, 7)])
def test_sincos_matches_mae_layout(dim, grid):
    ours = sincos_pos_embed(dim, grid)[0].double().numpy()
    np.testing.assert_allclose(ours, _mae_sincos_numpy(dim, grid), atol=1e-6)


# ------------------------------------------------------------------ encoder = timm ViT

def test_encoder_state_dict_is_timm_vit_and_features_equal(tiny_cfg):
    model = DeepMIM(tiny_cfg).eval()
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=0).eval()
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


# ------------------------------------------------------------------ the DeepMIM forward

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


def test_norm_pix_target_and_inverse():
    target = build_target({"name": "pixel", "norm_pix": True}, patch_size=4, in_chans=3)
    images = torch.randn(2, 3, 8, 8) * 3 + 1
    t = target(images, None)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(target.to_pixels(t, images), patchify(images, 4), atol=1e-4, rtol=1e-4)
    raw = build_target({"name": "pixel", "norm_pix": False}, patch_size=4, in_chans=3)
    torch.testing.assert_close(raw(images, None), patchify(images, 4))


def test_patchify_roundtrip_and_mae_order():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 48)
    # MAE order: patch (row 0, col 1), pixel (0, 0), then channels
    assert patches[0, 1, :3].tolist() == [images[0, c, 0, 4].item() for c in range(3)]
    assert torch.equal(unpatchify(patches, 4, 3), images)


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


def test_targets_are_outside_state_dict_and_optimizer(tiny_cfg):
    model = DeepMIM(tiny_cfg)
    assert not any(k.startswith("targets") for k in model.state_dict())
    assert sorted(model.decoders) == ["2", "4"]


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("mutate,message", [
    (lambda c: setattr(c, "mask_ratio", 1.0), "mask_ratio"),
    (lambda c: setattr(c.heads[0], "block", 9), "outside 1..4"),
    (lambda c: setattr(c.heads[1], "block", 2), "supervised once"),
    (lambda c: setattr(c.heads[0], "decoder_heads", 3), "not divisible"),
    (lambda c: setattr(c, "target", {"name": "pixels"}), "unknown target"),
    (lambda c: setattr(c, "target", {"name": "pixel", "normpix": True}), "Did you mean 'norm_pix'"),
])
def test_bad_model_configs_are_refused(tiny_cfg, mutate, message):
    mutate(tiny_cfg)
    with pytest.raises(ConfigError, match=message):
        DeepMIM(tiny_cfg)


# ------------------------------------------------------------------ presets

def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_vit_base_presets_match_paper_parameter_counts():
    deep = create_model("deepmim_pixel_vit_base")
    vit_b = timm.create_model("vit_base_patch16_224", num_classes=0, pretrained=False)
    assert _count(deep.encoder) == _count(vit_b)
    assert abs(_count(deep.encoder) / 1e6 - 85.8) < 0.05  # paper: ViT-B encoder ~85.8M
    assert sorted(int(b) for b in deep.decoders) == [6, 8, 10, 12]
    assert [deep.decoders[str(b)].blocks.__len__() for b in (6, 8, 10, 12)] == [4, 4, 4, 8]
    # the released model's 4-block 512-wide decoder with a 512-d (CLIP) output: ~13.3M
    clip_like = MaskedDecoder(768, 196, 512, 4, 16, out_dim=512)
    trainable = sum(p.numel() for p in clip_like.parameters() if p.requires_grad)
    assert abs(trainable / 1e6 - 13.3) < 0.05
    mae = create_model("mae_vit_base")
    assert list(mae.decoders) == ["12"] and len(mae.decoders["12"].blocks) == 8
    assert mae.decoders["12"].embed.out_features == 512


def test_extra_blocks_scale_with_depth():
    assert extra_blocks(12) == [6, 8, 10]
    assert extra_blocks(24) == [12, 16, 20]
    assert extra_blocks(6) == [3, 4, 5]
    large = preset_config("deepmim_pixel_vit_large")
    assert [h.block for h in large.heads] == [12, 16, 20, 24]


@pytest.mark.parametrize("name,img", [("deepmim_pixel_vit_micro_p4_32", 32), ("mae_vit_micro_p4_28", 28),
                                      ("deepmim_pixel_vit_tiny_p4_32", 32)])
def test_cpu_presets_run(name, img):
    model = create_model(name)
    assert model.encoder.cfg.patch_size == 4
    out = model(torch.randn(2, 3, img, img))
    assert torch.isfinite(out.loss)
    assert out.mask.shape == (2, (img // 4) ** 2)


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="Did you mean"):
        create_model("deepmim_pixel_vit_bas")


def test_create_model_from_dict_with_preset_override():
    model = create_model({"preset": "deepmim_pixel_vit_micro_p4_32", "heads": {"0": {"weight": 0.25}},
                          "mask_ratio": 0.6})
    assert model.heads[0].weight == 0.25 and model.cfg.mask_ratio == 0.6
    assert len(model.heads) == 4


def test_unused_parameters_are_the_blocks_after_the_deepest_head_and_the_unread_norm():
    from tests.conftest import tiny_model_config
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


def test_a_heads_names_are_made_and_parsed_in_one_place():
    from deepmim.models.head_names import decoder_blocks, head_loss_keys, loss_block, loss_key, row_block, row_name

    assert [loss_block(loss_key(b)) for b in (2, 10, 12)] == [2, 10, 12]
    assert loss_block("loss") is None and loss_block("loss_blockx") is None
    assert head_loss_keys(["loss", "loss_block10", "lr", "loss_block2"]) == ["loss_block2", "loss_block10"]  # by depth
    assert row_block(row_name(6)) == 6 and row_block("masked") is None
    from tests.conftest import tiny_model_config

    model = DeepMIM(tiny_model_config(heads=(4, 2)))
    assert decoder_blocks(model.decoders) == [2, 4] == model.blocks
