"""The ViT encoder: timm's VisionTransformer names, MAE masking, taps after any blocks."""

from __future__ import annotations

from functools import partial
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F

from ..config.schema import EncoderConfig
from .masking import Masking, random_masking, take_tokens
from .pos_embed import sincos_pos_embed


class MaskedViTEncoder(nn.Module):
    """A ViT whose state dict loads into `timm` VisionTransformer (num_classes=0) as is.

    Only the visible patches go through the blocks. `forward` returns the token
    sequence (cls + visible patches) after each requested block, before the final norm.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.grid_size = cfg.img_size // cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(cfg.embed_dim, self.grid_size), requires_grad=False)
        norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.Sequential(
            *[
                Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, norm_layer=norm_layer)
                for _ in range(cfg.depth)
            ]
        )
        self.norm = norm_layer(cfg.embed_dim)
        # a masked forward projects only the kept patches (`embed_visible`); False: MAE's order, every
        # patch projected by the conv and then dropped (what benchmarks time as the authors' code)
        self.embed_kept_only = True
        self._init_weights()

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def _init_weights(self) -> None:
        # MAE's initialisation: xavier on the patch projection as if it were a Linear.
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_linear_and_norm)
        init_linear_and_norm(self.norm)

    def set_fused_attn(self, enabled: bool) -> None:
        for block in self.blocks:
            block.attn.fused_attn = enabled

    def embed(self, images: torch.Tensor, masking: Optional[Masking]) -> torch.Tensor:
        """Patch tokens + position, masked, with the cls token in front."""
        if masking is not None and self.embed_kept_only and isinstance(self.patch_embed.norm, nn.Identity):
            x = self.embed_visible(images, masking.ids_keep)
        else:
            x = self.patch_embed(images) + self.pos_embed[:, 1:, :]
            if masking is not None:
                x = take_tokens(x, masking.ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def embed_visible(self, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """`take_tokens(patch_embed(images) + pos, ids_keep)` computed on the kept patches only: the patch
        projection is a per-patch linear map, so projecting the 25% that the encoder sees gives the same
        tokens (up to float rounding) for a quarter of the work, and its backward is a matmul instead of
        a strided convolution's weight gradient (ViT-B/16, batch 8, bf16 on a CPU: 16.4 -> 1.8 ms
        forward + backward; micro preset, batch 128: 4.9 -> 1.2 ms). The weights stay the conv's."""
        n, chans, height, width = images.shape
        p = self.cfg.patch_size
        if (height, width) != (self.cfg.img_size, self.cfg.img_size) or chans != self.cfg.in_chans:
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])} for an encoder of "
                f"{(self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)}: pre-training needs the "
                f"model's image size and channels (data.img_size, model.encoder.in_chans)"
            )
        patches = images.reshape(n, chans, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = take_tokens(patches.reshape(n, self.num_patches, chans * p * p), ids_keep)
        proj = self.patch_embed.proj
        x = F.linear(patches, proj.weight.reshape(proj.weight.shape[0], -1), proj.bias)
        return x + self.pos_embed[0, 1:, :].index_select(0, ids_keep.reshape(-1)).view_as(x)

    def forward(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.0,
        noise: Optional[torch.Tensor] = None,
        taps: Iterable[int] = (),
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[Dict[int, torch.Tensor], Optional[Masking]]:
        """Encode the visible patches; return {block: tokens after that block (1-based)} and the masking.

        mask_ratio 0 and no noise: no masking (all patches, as for downstream tasks).
        """
        masking = None
        if mask_ratio > 0 or noise is not None:
            masking = random_masking(images.shape[0], self.num_patches, mask_ratio, images.device, noise, generator)
        taps = sorted(set(taps))
        if taps and (taps[0] < 1 or taps[-1] > self.depth):
            raise ValueError(f"taps must be block indices in 1..{self.depth}, got {taps}")
        x = self.embed(images, masking)
        outputs: Dict[int, torch.Tensor] = {}
        last = taps[-1] if taps else self.depth
        for index, block in enumerate(self.blocks[:last], start=1):
            x = block(x)
            if index in taps:
                outputs[index] = x
        return outputs, masking

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, without masking (timm's forward_features)."""
        outputs, _ = self.forward(images, taps=[self.depth])
        return self.norm(outputs[self.depth])

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
    ):
        """timm VisionTransformer's `forward_intermediates`, same signature and outputs, without masking: what
        dense-prediction code (UperNet necks, detection backbones) calls. indices: the last n blocks (int), all
        (None) or these 0-based blocks (negative from the end); NCHW maps the patch tokens to the grid."""
        from timm.models._features import feature_take_indices

        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be NCHW or NLC, got {output_fmt!r}")
        take, last = feature_take_indices(self.depth, indices)
        n, _, height, width = x.shape
        x = self.embed(x, None)
        intermediates = []
        for i, block in enumerate(self.blocks[: last + 1] if stop_early else self.blocks):
            x = block(x, attn_mask=attn_mask, is_causal=is_causal) if attn_mask is not None or is_causal else block(x)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, :1] for y in intermediates]
        intermediates = [y[:, 1:] for y in intermediates]
        if output_fmt == "NCHW":
            grid = (height // self.cfg.patch_size, width // self.cfg.patch_size)
            intermediates = [y.reshape(n, *grid, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if output_dict:
            out = {"image_intermediates": intermediates}
            if return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        return intermediates if intermediates_only else (self.norm(x), intermediates)


def init_linear_and_norm(module: nn.Module) -> None:
    """MAE/timm-style init: xavier-uniform Linear weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
