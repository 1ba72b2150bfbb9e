"""The UperNet ViT: pyramid strides and shapes, a backbone equal to the pretrained encoder, and its
export to transformers with the same logits."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from deepmim.checkpoint import make_checkpoint
from deepmim.config.loader import to_dict
from deepmim.config.schema import EncoderConfig, SegmentConfig
from deepmim.models import DeepMIM
from deepmim.models.presets import preset_config
from deepmim.models.segmentation import UperNetViT, default_out_indices
from deepmim.tasks.export import export_checkpoint
from deepmim.tasks.segment import build_segmentor, load_segment_config, load_segmentor
from tests.helpers.models import TINY_ENCODER_CONFIG, tiny_model_config


def save_segmentor(path, rel_pos_bias=True, layer_scale=1.0, aux_channels=8):
    enc = EncoderConfig(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2)
    cfg = SegmentConfig()
    cfg.data.crop_size = 32
    cfg.model.channels, cfg.model.aux_channels = 16, aux_channels
    cfg.model.rel_pos_bias, cfg.model.layer_scale = rel_pos_bias, layer_scale
    model, _ = build_segmentor(cfg.model, 5, 32, enc=enc)
    with torch.no_grad():  # every weight and BatchNorm statistic away from its initial value
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(t.abs() + 0.5 if "running_var" in name else t + 0.1 * torch.randn_like(t))
    arch = {"encoder": dataclasses.asdict(enc), "num_classes": 5, "classes": ["sky", "road", "car", "tree", "cat"]}
    torch.save(make_checkpoint("segment", model.state_dict(), to_dict(cfg), arch), path)
    return path


@pytest.mark.parametrize("rel_pos_bias,layer_scale", [(True, 1.0), (False, None)])
def test_upernet_export_gives_transformers_the_same_logits(tmp_path, rel_pos_bias, layer_scale):
    transformers = pytest.importorskip("transformers")
    ckpt = save_segmentor(tmp_path / "seg.pt", rel_pos_bias, layer_scale)
    message = export_checkpoint(str(ckpt), str(tmp_path / "hf"), fmt="hf")
    assert "UperNetForSemanticSegmentation" in message
    ours, cfg, _ = load_segmentor(ckpt)
    hf = transformers.UperNetForSemanticSegmentation.from_pretrained(str(tmp_path / "hf")).eval()
    written = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(written) == set(hf.state_dict())  # nothing missing, nothing left over
    n_qkv = sum(k.endswith("attn.qkv.weight") for k in ours.state_dict())
    assert len(written) == len(ours.state_dict()) + 2 * n_qkv  # every tensor mapped (qkv split in three)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ours.eval()(x)
        logits = hf(pixel_values=x).logits
    assert logits.shape == expected.shape == (2, 5, 32, 32)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert hf.config.id2label[4] == "cat"
    processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / "hf"))
    assert processor.image_mean == pytest.approx([m / 255 for m in cfg.data.mean])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["backbone_config"]["out_indices"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "preset,depth,indices",
    [("mae_vit_small", 12, [3, 5, 7, 11]), ("mae_vit_base", 12, [3, 5, 7, 11]), ("mae_vit_large", 24, [7, 11, 15, 23])],
)
def test_pyramid_has_strides_4_8_16_32_for_each_preset(preset, depth, indices):
    enc = preset_config(preset).encoder
    assert enc.depth == depth and default_out_indices(depth) == indices
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = UperNetViT(enc, 150, 512, indices, channels=768)
        feats = model.features(torch.empty(2, 3, 512, 512))
        main_logits, aux_logits = model(torch.empty(2, 3, 512, 512), train_outputs=True)
    assert [tuple(f.shape) for f in feats] == [(2, enc.embed_dim, s, s) for s in (128, 64, 32, 16)]
    assert tuple(main_logits.shape) == (2, 150, 128, 128) and tuple(aux_logits.shape) == (2, 150, 32, 32)


def test_tiny_pyramid_and_logits_at_the_input_size():
    model = UperNetViT(TINY_ENCODER_CONFIG, 5, 16, default_out_indices(4), channels=16, aux_channels=8).eval()
    assert default_out_indices(4) == [0, 1, 2, 3] and default_out_indices(6) == [1, 2, 3, 5]
    feats = model.features(torch.randn(2, 3, 16, 16))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]  # strides 1, 2, 4, 8 of patch 4
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5, 16, 16)


def test_backbone_reproduces_the_pretrained_encoder(pretrained):
    """BEiT layout (q/v bias only, zero relative bias, layer scale 1) == our encoder's blocks."""
    source = DeepMIM(tiny_model_config())
    source.load_state_dict(torch.load(pretrained, weights_only=True)["model"])
    seg, _ = build_segmentor(
        load_segment_config("upernet_demo", [f"model.checkpoint={pretrained}", "model.drop_path=0"]).model, 11, 16
    )
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        taps, _ = source.encoder.eval()(images, taps=[1, 2, 3, 4])
        maps = seg.backbone.eval()(images)
    for block, got in zip((1, 2, 3, 4), maps):
        want = taps[block][:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
