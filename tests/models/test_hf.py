"""Hugging Face interop: our MAE-layout models and transformers' ViTMAEForPreTraining / ViTModel give the
same numbers both ways (tiny configs built here; nothing is downloaded)."""

import dataclasses
import json

import pytest
import torch

from deepmim import create_model, load_checkpoint
from deepmim.checkpoint import CheckpointError
from deepmim.config.schema import EncoderConfig, HeadConfig, ModelConfig
from deepmim.models import DeepMIM
from deepmim.tasks.export import export_checkpoint

transformers = pytest.importorskip("transformers")


def mae_config(norm_pix=True, mask_ratio=0.75, in_chans=3, heads=(4,)) -> ModelConfig:
    enc = EncoderConfig(img_size=16, patch_size=4, in_chans=in_chans, embed_dim=32, depth=4, num_heads=2)
    return ModelConfig(
        encoder=enc,
        mask_ratio=mask_ratio,
        target={"name": "pixel", "norm_pix": norm_pix},
        heads=[HeadConfig(block=b, decoder_dim=32, decoder_depth=2, decoder_heads=2) for b in heads],
    )


def scrambled(model):
    """Every trainable weight moved off its initialisation (norms and biases too): a key mapped to the wrong
    place cannot go unnoticed."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def save(model, path):
    torch.save(
        {"model": model.state_dict(), "config": {"model": dataclasses.asdict(model.cfg)}, "task": "pretrain"}, path
    )
    return path


def assert_same_outputs(ours, theirs, in_chans=3):
    images = torch.randn(3, in_chans, 16, 16)
    noise = torch.rand(3, 16)
    with torch.no_grad():
        mine = ours(images, noise=noise)
        hf = theirs(pixel_values=images, noise=noise)
    block = max(ours.blocks)
    assert torch.equal(mine.mask, hf.mask)
    assert torch.allclose(mine.preds[block], hf.logits, atol=1e-5), (mine.preds[block] - hf.logits).abs().max()
    assert mine.losses[block].item() == pytest.approx(hf.loss.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("norm_pix, mask_ratio, in_chans", [(True, 0.75, 3), (False, 0.6, 1)])
def test_export_hf_loads_in_vitmae_with_the_same_loss_and_predictions(tmp_path, norm_pix, mask_ratio, in_chans):
    model = scrambled(DeepMIM(mae_config(norm_pix, mask_ratio, in_chans)))
    message = export_checkpoint(str(save(model, tmp_path / "mae.pt")), str(tmp_path / "hf"), fmt="hf")
    assert "ViTMAEForPreTraining.from_pretrained" in message
    theirs, info = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["norm_pix_loss"], config["mask_ratio"], config["num_channels"]) == (norm_pix, mask_ratio, in_chans)
    assert config["layer_norm_eps"] == 1e-6
    assert_same_outputs(model, theirs.eval(), in_chans)
    back = load_checkpoint(tmp_path / "hf").eval()  # the released-model layout read back, config from config.json
    assert back.cfg.encoder == model.cfg.encoder and back.cfg.mask_ratio == mask_ratio
    assert_same_outputs(back, theirs.eval(), in_chans)


def test_folders_written_by_transformers_load_into_the_mae_preset(tmp_path):
    """A ViTMAE folder in transformers' own (5.x) layout, eps 1e-12 as the released configs: into the preset of
    the same size, and into the model its config.json describes (the same numbers exactly)."""
    preset = create_model("mae_vit_micro_p4_32").cfg
    enc, head = preset.encoder, preset.heads[0]
    hf_cfg = transformers.ViTMAEConfig(
        hidden_size=enc.embed_dim,
        num_hidden_layers=enc.depth,
        num_attention_heads=enc.num_heads,
        intermediate_size=4 * enc.embed_dim,
        image_size=enc.img_size,
        patch_size=enc.patch_size,
        decoder_hidden_size=head.decoder_dim,
        decoder_num_hidden_layers=head.decoder_depth,
        decoder_num_attention_heads=head.decoder_heads,
        decoder_intermediate_size=4 * head.decoder_dim,
        norm_pix_loss=True,
    )
    assert hf_cfg.layer_norm_eps == 1e-12
    torch.manual_seed(0)
    theirs = transformers.ViTMAEForPreTraining(hf_cfg).eval()
    theirs.save_pretrained(tmp_path / "released")
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        hf = theirs(pixel_values=images, noise=noise)
        own = load_checkpoint(tmp_path / "released").eval()
        assert own.cfg.encoder.norm_eps == 1e-12
        exact = own(images, noise=noise)
        into_preset = load_checkpoint(tmp_path / "released", create_model("mae_vit_micro_p4_32")).eval()
        approx = into_preset(images, noise=noise)
    assert torch.allclose(exact.preds[6], hf.logits, atol=1e-5) and exact.loss.item() == pytest.approx(
        hf.loss.item(), rel=1e-5
    )
    assert approx.loss.item() == pytest.approx(hf.loss.item(), rel=1e-3)  # the preset's eps is 1e-6


def test_encoder_only_export_to_vitmodel(tmp_path):
    model = scrambled(DeepMIM(mae_config(heads=(2, 4))))  # a DeepMIM model: its encoder is what transfers
    path = save(model, tmp_path / "deepmim.pt")
    export_checkpoint(str(path), str(tmp_path / "vit"), fmt="hf-encoder")
    vit, info = transformers.ViTModel.from_pretrained(
        tmp_path / "vit", add_pooling_layer=False, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(
            vit.eval()(pixel_values=images).last_hidden_state, model.encoder.forward_features(images), atol=1e-5
        )
    export_checkpoint(str(path), str(tmp_path / "vit32"), img_size=32, fmt="hf-encoder")
    vit32 = transformers.ViTModel.from_pretrained(tmp_path / "vit32", add_pooling_layer=False)
    assert vit32(pixel_values=torch.randn(1, 3, 32, 32)).last_hidden_state.shape == (1, 65, 32)
    message = export_checkpoint(str(path), str(tmp_path / "mae"), fmt="hf")  # DeepMIM -> ViTMAE: the last decoder
    assert "decoders at blocks 2 are left out" in message


def test_export_preset_names_the_architecture_of_bare_weights(tmp_path):
    from deepmim.models.export import encoder_state_dict
    from deepmim.models.loading import load_encoder

    model = scrambled(create_model("mae_vit_micro_p4_32"))
    bare = tmp_path / "mae_release.pth"
    torch.save({"model": encoder_state_dict(model)}, bare)  # MAE's encoder release: timm names, no config
    with pytest.raises(CheckpointError, match="--preset NAME"):
        export_checkpoint(str(bare), str(tmp_path / "x.safetensors"))
    export_checkpoint(str(bare), str(tmp_path / "enc.safetensors"), preset="mae_vit_micro_p4_32", img_size=64)
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "enc.safetensors"))["pos_embed"].shape == (1, 257, 128)
    export_checkpoint(str(bare), str(tmp_path / "vit"), preset="mae_vit_micro_p4_32", fmt="hf-encoder")
    assert load_encoder(tmp_path / "vit").cfg.embed_dim == 128  # the folder reads back (config.json)


def test_cli_export_takes_preset_and_format(tmp_path, capsys):
    from deepmim.cli.main import main

    model = scrambled(DeepMIM(mae_config()))
    path = save(model, tmp_path / "mae.pt")
    assert main(["export", str(path), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "ViTMAEForPreTraining.from_pretrained" in capsys.readouterr().out
    assert main(["export", str(path), "--preset", "mae_vit_base", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "records its own" in capsys.readouterr().err
