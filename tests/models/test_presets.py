"""Model presets: the paper's ViT-B/L parameter counts (built on the meta device), extra blocks, CPU
presets that run, unknown names with suggestions."""

import pytest
import timm
import torch

from deepmim import create_model
from deepmim.config.loader import ConfigError
from deepmim.models.decoder import MaskedDecoder
from deepmim.models.presets import extra_blocks, preset_config


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_vit_base_presets_match_paper_parameter_counts():
    with torch.device("meta"):  # parameter counts only: no memory, no initialisation
        deep = create_model("deepmim_pixel_vit_base")
        vit_b = timm.create_model("vit_base_patch16_224", num_classes=0, pretrained=False)
    assert _count(deep.encoder) == _count(vit_b)
    assert abs(_count(deep.encoder) / 1e6 - 85.8) < 0.05  # paper: ViT-B encoder ~85.8M
    assert sorted(int(b) for b in deep.decoders) == [6, 8, 10, 12]
    assert [deep.decoders[str(b)].blocks.__len__() for b in (6, 8, 10, 12)] == [4, 4, 4, 8]
    # the released model's 4-block 512-wide decoder with a 512-d (CLIP) output: ~13.3M
    with torch.device("meta"):
        clip_like = MaskedDecoder(768, 196, 512, 4, 16, out_dim=512)
    trainable = sum(p.numel() for p in clip_like.parameters() if p.requires_grad)
    assert abs(trainable / 1e6 - 13.3) < 0.05
    with torch.device("meta"):
        mae = create_model("mae_vit_base")
    assert list(mae.decoders) == ["12"] and len(mae.decoders["12"].blocks) == 8
    assert mae.decoders["12"].embed.out_features == 512


def test_extra_blocks_scale_with_depth():
    assert extra_blocks(12) == [6, 8, 10]
    assert extra_blocks(24) == [12, 16, 20]
    assert extra_blocks(6) == [3, 4, 5]
    large = preset_config("deepmim_pixel_vit_large")
    assert [h.block for h in large.heads] == [12, 16, 20, 24]


@pytest.mark.parametrize(
    "name,img",
    [("deepmim_pixel_vit_micro_p4_32", 32), ("mae_vit_micro_p4_28", 28), ("deepmim_pixel_vit_tiny_p4_32", 32)],
)
def test_cpu_presets_run(name, img):
    model = create_model(name)
    assert model.encoder.cfg.patch_size == 4
    out = model(torch.randn(2, 3, img, img))
    assert torch.isfinite(out.loss)
    assert out.mask.shape == (2, (img // 4) ** 2)


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="Did you mean"):
        create_model("deepmim_pixel_vit_bas")


@pytest.mark.parametrize(
    "name,blocks,dims",
    [
        ("deepmim_clip_vit_base", [6, 8, 10, 12], 512),
        ("mae_clip_vit_base", [12], 512),
        ("deepmim_hog_vit_base", [6, 8, 10, 12], 108),
    ],
)
def test_paper_presets_build(name, blocks, dims):
    with torch.device("meta"):  # the structure only
        model = create_model(name)
    assert model.blocks == blocks
    assert {d.pred.out_features for d in model.decoders.values()} == {dims}
