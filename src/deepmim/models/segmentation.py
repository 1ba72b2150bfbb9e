"""UperNet on a plain ViT, as the DeepMIM/MAE/BEiT authors evaluate on ADE20K.

- `ViTBackbone`: timm's BEiT-style ViT (absolute position embedding, optional relative
  position bias and layer scale, drop path) returning the tokens after a few blocks as maps.
- `FeaturePyramid`: the single-stride ViT maps turned into strides 4/8/16/32 (two transposed
  convs with BN + GELU between, one transposed conv, identity, 2x2 max-pool).
- `UperHead`: pyramid pooling on the coarsest level + FPN fusion + a 1x1 classifier.
- `FCNHead`: the auxiliary head on the third level (its loss only helps optimisation).

Written from the papers and the authors' mmseg config, not from mmseg's code.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_strict
from ..config.loader import ConfigError
from ..config.schema import EncoderConfig

PAPER_BLOCKS = (4, 6, 8, 12)  # of 12: the authors' out_indices 3, 5, 7, 11


def default_out_indices(depth: int) -> List[int]:
    """The authors' blocks 4/6/8/12 of 12, scaled to another depth, as 0-based indices
    (24 -> 7/11/15/23 as BEiT-L, 6 -> 1/2/3/5, 4 -> 0/1/2/3)."""
    return [max(round(b * depth / 12), 1) - 1 for b in PAPER_BLOCKS]


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """mmseg's ConvModule default: conv without bias, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ViTBackbone(nn.Module):
    """timm's Beit (a ViT with BEiT's options) returning the maps after blocks `out_indices`.

    The absolute position embedding is resampled on the fly when the input grid differs from
    `img_size` (whole-image inference); a relative position bias exists for one grid only, so
    with it inputs must be `img_size` (sliding-window inference pads windows to that size)."""

    def __init__(
        self,
        enc: EncoderConfig,
        img_size: int,
        out_indices: Sequence[int],
        drop_path: float = 0.1,
        rel_pos_bias: bool = True,
        layer_scale: Optional[float] = 1.0,
    ):
        super().__init__()
        from timm.models.beit import Beit

        if sorted(set(out_indices)) != list(out_indices) or not 0 <= out_indices[0] <= out_indices[-1] < enc.depth:
            raise ConfigError(
                f"model.out_indices must be increasing block indices in [0, {enc.depth - 1}], got {list(out_indices)}"
            )
        if img_size % enc.patch_size:
            raise ConfigError(f"the crop size {img_size} must be a multiple of the patch size {enc.patch_size}")
        self.vit = Beit(
            img_size=img_size,
            patch_size=enc.patch_size,
            in_chans=enc.in_chans,
            num_classes=0,
            global_pool="",
            embed_dim=enc.embed_dim,
            depth=enc.depth,
            num_heads=enc.num_heads,
            mlp_ratio=enc.mlp_ratio,
            qkv_bias=enc.qkv_bias,
            drop_path_rate=drop_path,
            norm_layer=partial(nn.LayerNorm, eps=enc.norm_eps),
            init_values=layer_scale or None,
            use_abs_pos_emb=True,
            use_rel_pos_bias=rel_pos_bias,
        )
        self.vit.norm = nn.Identity()  # the maps are taken raw, as the authors do
        self.out_indices = list(out_indices)
        self.patch_size = enc.patch_size
        self.grid = img_size // enc.patch_size
        self.rel_pos_bias = rel_pos_bias

    def load_encoder_state(self, state: Dict[str, torch.Tensor]) -> None:
        """Our encoder's weights (timm ViT names) into the Beit layout. BEiT has no key bias: the
        dropped k bias adds q.b_k to every logit of a query row, which softmax ignores."""
        from timm.layers import resample_abs_pos_embed

        mapped = {}
        for key, value in state.items():
            if key.startswith("norm.") or key.startswith(("head.", "fc_norm.")):
                continue
            if key.endswith("attn.qkv.bias"):
                q, _, v = value.chunk(3)
                mapped[key.replace("qkv.bias", "q_bias")] = q
                mapped[key.replace("qkv.bias", "v_bias")] = v
            elif key.endswith(".ls1.gamma") or key.endswith(".ls2.gamma"):
                mapped[key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")] = value
            else:
                mapped[key] = value
        mapped["pos_embed"] = resample_abs_pos_embed(mapped["pos_embed"], [self.grid, self.grid], num_prefix_tokens=1)
        # BEiT's parts our encoder lacks start fresh: a zero relative position bias, layer scale 1.
        load_strict(
            self.vit,
            mapped,
            context="pre-trained weights do not fit the backbone",
            allow_missing=("*relative_position_bias_table", "*gamma_1", "*gamma_2"),
        )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        from timm.layers import resample_abs_pos_embed

        vit = self.vit
        tokens = vit.patch_embed.proj(x)  # the conv directly: any size that divides by the patch
        batch, _, h, w = tokens.shape
        if self.rel_pos_bias and (h, w) != (self.grid, self.grid):
            raise ConfigError(
                f"with a relative position bias the backbone takes {self.grid * self.patch_size}px "
                f"inputs only, got {x.shape[-2]}x{x.shape[-1]}: use eval.mode=slide"
            )
        tokens = tokens.flatten(2).transpose(1, 2)
        pos = vit.pos_embed
        if (h, w) != (self.grid, self.grid):
            pos = resample_abs_pos_embed(pos, [h, w], old_size=[self.grid, self.grid], num_prefix_tokens=1)
        tokens = torch.cat([vit.cls_token.expand(batch, -1, -1), tokens], dim=1) + pos
        tokens = vit.pos_drop(tokens)
        maps = []
        for i, block in enumerate(vit.blocks[: self.out_indices[-1] + 1]):
            tokens = block(tokens)
            if i in self.out_indices:
                maps.append(tokens[:, 1:].transpose(1, 2).reshape(batch, -1, h, w))
        return maps


class FeaturePyramid(nn.Module):
    """Four same-stride maps -> strides /4, /8, /16, /32 of the input (for patch 16)."""

    def __init__(self, dim: int):
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.same = nn.Identity()
        self.down2 = nn.MaxPool2d(2, stride=2)

    def forward(self, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [op(m) for op, m in zip((self.up4, self.up2, self.same, self.down2), maps)]


class PyramidPooling(nn.Module):
    """PSPNet's module: average-pool to each scale, 1x1 conv, upsample back, concatenate."""

    def __init__(self, dim: int, channels: int, scales: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(dim, channels, 1)) for s in scales
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat(
            [x] + [F.interpolate(b(x), size, mode="bilinear", align_corners=False) for b in self.branches], dim=1
        )


class UperHead(nn.Module):
    """UperNet: PPM on the coarsest level, top-down FPN, all levels fused at the finest stride."""

    def __init__(
        self, in_dims: Sequence[int], channels: int, num_classes: int, pool_scales=(1, 2, 3, 6), dropout: float = 0.1
    ):
        super().__init__()
        self.ppm = PyramidPooling(in_dims[-1], channels, pool_scales)
        self.ppm_bottleneck = conv_bn_relu(in_dims[-1] + len(pool_scales) * channels, channels, 3)
        self.laterals = nn.ModuleList(conv_bn_relu(d, channels, 1) for d in in_dims[:-1])
        self.fpn_convs = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_dims[:-1])
        self.fuse = conv_bn_relu(len(in_dims) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [lat(f) for lat, f in zip(self.laterals, feats)] + [self.ppm_bottleneck(self.ppm(feats[-1]))]
        for i in range(len(levels) - 1, 0, -1):  # top-down: each level gets the coarser one added
            levels[i - 1] = levels[i - 1] + F.interpolate(
                levels[i], levels[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(level) for conv, level in zip(self.fpn_convs, levels)] + [levels[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    """The auxiliary head: one 3x3 conv block and a 1x1 classifier on one pyramid level."""

    def __init__(self, dim: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = conv_bn_relu(dim, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class UperNetViT(nn.Module):
    """backbone -> pyramid -> UperHead (+ FCN aux head on level `aux_level` while training).

    `forward` returns logits at the input resolution; `forward_train` returns (main, aux)
    logits at strides 4 and 16 for the loss (upsampled there, as mmseg does)."""

    def __init__(
        self,
        enc: EncoderConfig,
        num_classes: int,
        img_size: int,
        out_indices: Sequence[int],
        channels: int = 768,
        aux_channels: int = 256,
        pool_scales=(1, 2, 3, 6),
        drop_path: float = 0.1,
        rel_pos_bias: bool = True,
        layer_scale: Optional[float] = 1.0,
        aux_level: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        if len(out_indices) != 4:
            raise ConfigError(f"model.out_indices needs 4 blocks (one per pyramid level), got {list(out_indices)}")
        self.num_classes = num_classes
        self.backbone = ViTBackbone(enc, img_size, out_indices, drop_path, rel_pos_bias, layer_scale)
        self.neck = FeaturePyramid(enc.embed_dim)
        self.decode_head = UperHead([enc.embed_dim] * 4, channels, num_classes, pool_scales, dropout)
        self.aux_head = FCNHead(enc.embed_dim, aux_channels, num_classes, dropout) if aux_channels else None
        self.aux_level = aux_level
        self.patch_size = enc.patch_size

    def features(self, images: torch.Tensor) -> List[torch.Tensor]:
        return self.neck(self.backbone(images))

    def forward_train(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        feats = self.features(images)
        aux = self.aux_head(feats[self.aux_level]) if self.aux_head is not None else None
        return self.decode_head(feats), aux

    def forward(self, images: torch.Tensor, train_outputs: bool = False):
        """Logits (N, classes, H, W) for any H, W: padded to the patch size, cropped back.
        train_outputs=True: `forward_train` (through forward, so DDP sees the call)."""
        if train_outputs:
            return self.forward_train(images)
        h, w = images.shape[-2:]
        pad_h, pad_w = -h % self.patch_size, -w % self.patch_size
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        logits = self.decode_head(self.features(images))
        logits = F.interpolate(logits, images.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    # layer-wise lr decay (timm.optim.param_groups_layer_decay reads this)
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Embeddings = layer 0, block i = layer i + 1, neck and heads = the last layer (lr scale 1),
        as BEiT's LayerDecayOptimizerConstructor."""
        return dict(
            stem=r"^backbone\.vit\.(?:cls_token|pos_embed|patch_embed|rel_pos_bias)",
            blocks=[(r"^backbone\.vit\.blocks\.(\d+)", None)],
        )

    def no_weight_decay(self) -> List[str]:
        return ["backbone.vit." + n for n in self.backbone.vit.no_weight_decay()]
