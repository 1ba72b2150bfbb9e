"""`deepmim export --format hf` of a segmentation checkpoint: transformers' UperNetForSemanticSegmentation
loads it strictly and gives the same logits as deepmim's UperNet for the same normalised pixels."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from deepmim.checkpoint import make_checkpoint
from deepmim.config.loader import to_dict
from deepmim.config.schema import EncoderConfig, SegmentConfig
from deepmim.tasks.export import export_checkpoint
from deepmim.tasks.segment import build_segmentor, load_segmentor


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
