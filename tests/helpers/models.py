"""Tiny models and model files shared by the test modules: configs, checkpoints in deepmim's,
the authors' and open_clip's layouts, and weight perturbation so a mis-mapped tensor shows."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from deepmim.config.schema import EncoderConfig, HeadConfig, ModelConfig
from deepmim.models.pos_embed import sincos_pos_embed


def tiny_model_config(img_size: int = 16, heads=(2, 4), norm_pix: bool = True) -> ModelConfig:
    """A 4-block, 32-wide ViT on 16x16 images (patch 4: 16 patches) with 1-block decoders."""
    return ModelConfig(
        encoder=EncoderConfig(img_size=img_size, patch_size=4, embed_dim=32, depth=4, num_heads=2),
        heads=[HeadConfig(block=b, decoder_dim=32, decoder_depth=1, decoder_heads=2) for b in heads],
        target={"name": "pixel", "norm_pix": norm_pix},
    )


def save_tiny_pretrained(path):
    """A randomly initialised tiny DeepMIM checkpoint (model + config), as `deepmim pretrain` writes one."""
    import dataclasses

    from deepmim.models import DeepMIM

    model = DeepMIM(tiny_model_config())
    torch.save(
        {"task": "pretrain", "model": model.state_dict(), "config": {"model": dataclasses.asdict(model.cfg)}}, path
    )
    return path


class AuthorsLayoutModel(nn.Module):
    """A reference written from the paper's description of the released model, with its key names:
    taps after blocks `taps` (raw) and the last block (after norm); decoder k reads tap k; one shared
    decoder_pos_embed; predictions for every token, cls dropped before the loss. `k_names` empty
    gives MAE's single-decoder names."""

    def __init__(
        self,
        img=16,
        patch=4,
        dim=32,
        depth=4,
        heads=2,
        dec_dim=32,
        dec_depth=1,
        out_dim=48,
        dec_heads=2,
        taps=(2,),
        numbered=True,
    ):
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
            setattr(
                self,
                f"decoder_blocks{s}",
                nn.ModuleList(
                    [Block(dec_dim, dec_heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(dec_depth)]
                ),
            )
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
        feats = feats[-len(self.suffixes) :]
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


TINY_ENCODER_CONFIG = EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2)


TINY_ENCODER = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2}


try:
    import open_clip
except ImportError:
    open_clip = None


def perturb_(module, scale=0.05):
    """Random-init models have unit norms and zero biases: perturb so a mis-mapped weight shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def tiny_clip(quick_gelu=True, head_width=64):
    """A CLIP with a 2-block, 128-wide ViT image tower on 16px images, patch 4 (4x4 grid)."""
    vision = open_clip.model.CLIPVisionCfg(
        layers=2, width=128, head_width=head_width, patch_size=4, image_size=16, output_tokens=True
    )
    text = open_clip.model.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return perturb_(open_clip.model.CLIP(embed_dim=48, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval())
