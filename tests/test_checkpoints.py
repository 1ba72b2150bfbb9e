"""Loading the authors', MAE's and timm's layouts, and exporting to timm."""
from functools import partial

import pytest
import timm
import torch
from torch import nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from deepmim import create_model, load_checkpoint
from deepmim.cli.main import main as cli_main
from deepmim.models import CheckpointError, DeepMIM, load_weights
from deepmim.models.pos_embed import sincos_pos_embed
from deepmim.targets import patchify
from tests.conftest import tiny_model_config


class AuthorsLayoutModel(nn.Module):
    """A reference written from the paper's description of the released model, with its key names:
    taps after blocks `taps` (raw) and the last block (after norm); decoder k reads tap k; one shared
    decoder_pos_embed; predictions for every token, cls dropped before the loss. `k_names` empty
    gives MAE's single-decoder names."""

    def __init__(self, img=16, patch=4, dim=32, depth=4, heads=2, dec_dim=32, dec_depth=1, out_dim=48, dec_heads=2,
                 taps=(2,), numbered=True):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img, patch, 3, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(sincos_pos_embed(dim, img // patch), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(dim)
        self.taps = list(taps)
        self.suffixes = [str(k) for k in range(1, len(taps) + 2)] if numbered else [""]
        for s in self.suffixes:
            setattr(self, f"decoder_embed{s}", nn.Linear(dim, dec_dim))
            setattr(self, f"mask_token{s}", nn.Parameter(torch.randn(1, 1, dec_dim) * 0.02))
            setattr(self, f"decoder_blocks{s}", nn.ModuleList(
                [Block(dec_dim, dec_heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(dec_depth)]))
            setattr(self, f"decoder_norm{s}", norm(dec_dim))
            setattr(self, f"decoder_pred{s}", nn.Linear(dec_dim, out_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(dec_dim, img // patch), requires_grad=False)
        for p in self.parameters():  # non-trivial norms and biases, so a wrong mapping shows
            if p.requires_grad:
                nn.init.normal_(p, std=0.05 if p.ndim > 1 else 0.5)

    def forward(self, images, noise):
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        keep = int(x.shape[1] * 0.25)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].repeat(1, 1, x.shape[2]))
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        feats = []
        for i, blk in enumerate(self.blocks, start=1):
            x = blk(x)
            if i in self.taps:
                feats.append(x)
        feats.append(self.norm(x))
        feats = feats[-len(self.suffixes):]
        return [self.decode(f, ids_restore, s)[:, 1:] for f, s in zip(feats, self.suffixes)]

    def decode(self, x, ids_restore, s):
        x = getattr(self, f"decoder_embed{s}")(x)
        tokens = getattr(self, f"mask_token{s}").repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:], tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for blk in getattr(self, f"decoder_blocks{s}"):
            x = blk(x)
        return getattr(self, f"decoder_pred{s}")(getattr(self, f"decoder_norm{s}")(x))


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
    vit = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=4,
                                                           num_heads=2, num_classes=10).eval()
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
    torch.save({"task": "pretrain", "model": teacher.state_dict(), "config": {"model": _asdict(teacher.cfg)}},
               tmp_path / "t.pt")
    cfg = tiny_model_config()
    cfg.target = {"name": "teacher", "kind": "deepmim", "path": str(tmp_path / "t.pt")}
    student = DeepMIM(cfg)
    torch.save({"task": "pretrain", "model": student.state_dict(), "config": {"model": _asdict(student.cfg)}},
               tmp_path / "s.pt")
    (tmp_path / "t.pt").unlink()  # the teacher is gone: the full model cannot be rebuilt ...
    with pytest.raises(Exception):
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
