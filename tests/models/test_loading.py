"""Loading weights: the authors', MAE's and timm's layouts, encoder-only files, released ViT-B files,
and files that are damaged, malformed or of impossible sizes, refused with the file named."""

import json
import os
import time

import pytest
import timm
import torch

from deepmim import create_model, load_checkpoint
from deepmim.checkpoint import LAST, CheckpointError
from deepmim.cli.main import main
from deepmim.cli.main import main as cli_main
from deepmim.models import DeepMIM, load_weights
from deepmim.targets import patchify
from tests.helpers.cli import cli_error, single_line_cli_error
from tests.helpers.models import AuthorsLayoutModel, tiny_model_config


def _mse_norm_pix(pred, images, mask):
    t = patchify(images, 4)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    return (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()


def test_authors_layout_loads_every_key_and_gives_same_predictions_and_losses():
    ref = AuthorsLayoutModel(taps=(2, 3), numbered=True).eval()
    state = {"model": ref.state_dict(), "epoch": 1599}
    model = DeepMIM(tiny_model_config(heads=(2, 3, 4))).eval()
    notes = load_weights(model, state)
    assert notes == []
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    ours = model(images, noise=noise)
    theirs = ref(images, noise)
    for block, pred in zip([2, 3, 4], theirs):
        torch.testing.assert_close(ours.preds[block], pred, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.losses[block], _mse_norm_pix(pred, images, ours.mask), rtol=1e-5, atol=1e-6)


def test_mae_layout_with_decoder_loads_into_single_head_model():
    ref = AuthorsLayoutModel(taps=(), numbered=False).eval()
    model = DeepMIM(tiny_model_config(heads=(4,))).eval()
    assert load_weights(model, {"model": ref.state_dict()}) == []
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    torch.testing.assert_close(model(images, noise=noise).preds[4], ref(images, noise)[0], rtol=1e-5, atol=1e-5)


def test_encoder_only_files_load_encoder_and_say_decoders_stay(tmp_path):
    ref = AuthorsLayoutModel(taps=(), numbered=False)
    encoder_only = {k: v for k, v in ref.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain_vit.pth")
    model = DeepMIM(tiny_model_config(heads=(4,)))
    before = model.decoders["4"].embed.weight.clone()
    with pytest.warns(UserWarning, match="no decoder weights"):
        load_weights(model, tmp_path / "mae_pretrain_vit.pth")
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    assert torch.equal(model.decoders["4"].embed.weight, before)


def test_timm_vit_weights_load_into_encoder_and_drop_the_head():
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10
    ).eval()
    model = DeepMIM(tiny_model_config()).eval()
    with pytest.warns(UserWarning, match="dropped the classifier head"):
        load_weights(model, vit.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model.encoder.forward_features(x), vit.forward_features(x), rtol=1e-5, atol=1e-5)


def test_unknown_keys_and_shape_mismatches_are_named():
    model = DeepMIM(tiny_model_config())
    state = dict(model.state_dict())
    state["encoder.extra_thing"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="encoder.extra_thing"):
        load_weights(model, state)
    state = dict(model.state_dict())
    state["encoder.norm.weight"] = torch.zeros(64)
    with pytest.raises(CheckpointError, match=r"encoder.norm.weight: file \(64,\) vs model \(32,\)"):
        load_weights(model, state)
    state = dict(model.state_dict())
    del state["decoders.2.pred.bias"]
    with pytest.raises(CheckpointError, match="decoders.2.pred.bias"):
        load_weights(model, state)
    with pytest.raises(CheckpointError, match="names decoder 5"):
        load_weights(model, {"decoder_embed5.weight": torch.zeros(1), "decoder_embed1.weight": torch.zeros(1)})


def test_missing_or_corrupt_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)


def test_export_loads_in_timm_strict_with_equal_features(tmp_path):
    model = create_model("mae_vit_tiny").eval()
    ckpt = tmp_path / "ck.pt"
    torch.save({"task": "pretrain", "model": model.state_dict(), "config": {"model": _asdict(model.cfg)}}, ckpt)
    out = tmp_path / "enc.safetensors"
    assert cli_main(["export", str(ckpt), "--out", str(out)]) == 0
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, checkpoint_path=str(out)).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(vit.forward_features(x), model.encoder.forward_features(x), rtol=1e-4, atol=1e-4)
    # a different resolution: position embedding resampled, still loads strictly
    out384 = tmp_path / "enc384.safetensors"
    assert cli_main(["export", str(ckpt), "--out", str(out384), "--img-size", "384"]) == 0
    vit384 = timm.create_model("vit_tiny_patch16_384", num_classes=0, checkpoint_path=str(out384))
    assert vit384.pos_embed.shape == (1, 1 + 24 * 24, 192)
    torch.testing.assert_close(vit384.pos_embed[:, 0], model.encoder.pos_embed[:, 0])


def _asdict(cfg):
    import dataclasses

    return dataclasses.asdict(cfg)


def test_load_encoder_needs_no_teacher_file_and_reads_released_layouts(tmp_path):
    from deepmim.models.loading import load_encoder

    teacher = DeepMIM(tiny_model_config())
    torch.save(
        {"task": "pretrain", "model": teacher.state_dict(), "config": {"model": _asdict(teacher.cfg)}},
        tmp_path / "t.pt",
    )
    cfg = tiny_model_config()
    cfg.target = {"name": "teacher", "kind": "deepmim", "path": str(tmp_path / "t.pt")}
    student = DeepMIM(cfg)
    torch.save(
        {"task": "pretrain", "model": student.state_dict(), "config": {"model": _asdict(student.cfg)}},
        tmp_path / "s.pt",
    )
    (tmp_path / "t.pt").unlink()  # the teacher is gone: the full model cannot be rebuilt ...
    with pytest.raises(CheckpointError, match="t.pt' does not exist"):
        load_checkpoint(tmp_path / "s.pt")
    encoder = load_encoder(tmp_path / "s.pt")  # ... its encoder still loads
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(encoder.forward_features(x), student.encoder.forward_features(x))
    ref = AuthorsLayoutModel(taps=(2, 3), numbered=True)
    torch.save({"model": ref.state_dict()}, tmp_path / "authors.pth")
    encoder = load_encoder(tmp_path / "authors.pth", tiny_model_config(heads=(2, 3, 4)))
    assert torch.equal(encoder.blocks[1].mlp.fc1.weight, ref.blocks[1].mlp.fc1.weight)
    with pytest.raises(CheckpointError, match="no deepmim config"):
        load_encoder(tmp_path / "authors.pth")


@pytest.mark.parametrize("config", ["{not json", "[1, 2]"])
def test_malformed_safetensors_metadata_names_the_file(tmp_path, capsys, config):
    from safetensors.torch import save_file

    path = tmp_path / "classifier.safetensors"
    save_file({"head.weight": torch.zeros(2, 2)}, str(path), metadata={"task": "finetune", "config": config})
    err = single_line_cli_error(capsys, "evaluate", str(path))
    assert f"cannot read checkpoint '{path}': its safetensors metadata 'config' is" in err
    assert "Export the checkpoint again" in err


@pytest.mark.parametrize(
    "key,value",
    [
        ("hidden_size", 10**7),
        ("hidden_size", -128),
        ("hidden_size", "128"),
        ("num_hidden_layers", 0),
        ("patch_size", 0),
    ],
)
def test_a_hugging_face_config_with_impossible_sizes_is_refused(tmp_path, capsys, key, value):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=16,
        patch_size=4,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=128,
    )
    folder = tmp_path / "hf"
    transformers.ViTMAEForPreTraining(config).save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw[key] = value
    (folder / "config.json").write_text(json.dumps(raw))
    capsys.readouterr()  # save_pretrained's progress
    start = time.perf_counter()
    assert main(["export", str(folder), "--out", str(tmp_path / "enc.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{folder / 'config.json'}'" in err[0] and key.split("_")[0] in err[0]
    assert time.perf_counter() - start < 20 and not (tmp_path / "enc.safetensors").exists()
    from deepmim.models.loading import load_checkpoint

    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(folder)


@pytest.mark.slow
def test_authors_released_layout_loads_into_deepmim_clip_vit_base_with_every_key_used():
    ref = AuthorsLayoutModel(
        img=224,
        patch=16,
        dim=768,
        depth=12,
        heads=12,
        dec_dim=512,
        dec_depth=4,
        dec_heads=16,
        out_dim=512,
        taps=(6, 8, 10),
    )
    state = ref.state_dict()
    assert len([k for k in state if k.startswith("decoder_embed")]) == 8  # k = 1..4, weight + bias
    model = create_model("deepmim_clip_vit_base")
    assert load_weights(model, {"model": state}) == []
    assert torch.equal(model.decoders["10"].blocks[3].mlp.fc2.weight, ref.decoder_blocks3[3].mlp.fc2.weight)
    assert torch.equal(model.decoders["12"].mask_token, ref.mask_token4)
    for block in (6, 8, 10, 12):
        assert torch.equal(model.decoders[str(block)].pos_embed, ref.decoder_pos_embed)


def test_damaged_safetensors_end_in_one_paragraph(finished_run, tmp_path, capsys):
    assert main(["export", str(finished_run / LAST), "--out", str(tmp_path / "enc.safetensors")]) == 0
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "enc.safetensors").read_bytes()[:3000])
    (tmp_path / "random.safetensors").write_bytes(os.urandom(5000))
    for name in ("cut.safetensors", "random.safetensors"):
        err = cli_error(capsys, "export", str(tmp_path / name), "--out", str(tmp_path / "x.safetensors"))
        assert f"'{tmp_path / name}'" in err and "not a readable safetensors file" in err
