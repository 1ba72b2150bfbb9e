"""The DeepMIM wrapper: one encoder, one decoder per supervised depth, losses summed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from ..config.loader import ConfigError
from ..config.schema import HeadConfig, ModelConfig
from .decoder import MaskedDecoder
from .encoder import MaskedViTEncoder
from .heads import decoder_key
from .masking import Masking
from .target import Target, build_target


@dataclass
class PretrainOutput:
    """loss: weighted sum over heads; losses: {block: unweighted loss of that head};
    mask: (N, L), 1 = masked; preds: {block: (N, L, target dim)}; masking: the full masking;
    taps: {block: (N, 1 + L_visible, D) encoder tokens after that block, before the final norm} for the
    supervised blocks and any extra `taps` asked of forward (e.g. by the online probe)."""

    loss: torch.Tensor
    losses: Dict[int, torch.Tensor]
    mask: torch.Tensor
    preds: Dict[int, torch.Tensor]
    masking: Masking
    taps: Dict[int, torch.Tensor] = field(default_factory=dict)


class DeepMIM(nn.Module):
    """MAE when there is one head on the last block; DeepMIM with extra heads on earlier blocks.

    Targets are deliberately kept out of the module tree: a frozen teacher must never
    reach the optimizer or the checkpoint. `_apply` still moves them with the model.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        validate_model_config(cfg)
        self.cfg = cfg
        self.encoder = MaskedViTEncoder(cfg.encoder)
        self.heads: List[HeadConfig] = sorted(cfg.heads, key=lambda h: h.block)
        patch, chans = cfg.encoder.patch_size, cfg.encoder.in_chans
        targets: Dict[str, Target] = {}
        self.head_target_key: Dict[int, str] = {}
        for i, head in enumerate(self.heads):
            spec = head.target if head.target is not None else cfg.target
            key = json.dumps(spec, sort_keys=True)
            if key not in targets:
                targets[key] = build_target(spec, patch, chans, path=f"model.heads.{i}.target")
            self.head_target_key[head.block] = key
        object.__setattr__(self, "targets", targets)
        self.decoders = nn.ModuleDict({
            decoder_key(h.block): MaskedDecoder(
                cfg.encoder.embed_dim, self.encoder.num_patches, h.decoder_dim, h.decoder_depth, h.decoder_heads,
                out_dim=targets[self.head_target_key[h.block]].dim, norm_eps=cfg.encoder.norm_eps)
            for h in self.heads
        })

    @property
    def blocks(self) -> List[int]:
        return [h.block for h in self.heads]

    def target_of(self, block: int) -> Target:
        return self.targets[self.head_target_key[block]]

    def _apply(self, fn, recurse: bool = True):  # noqa: D401 - torch hook
        super()._apply(fn, recurse)
        for target in self.targets.values():
            target._apply(fn, recurse)
        return self

    def store_frozen_targets_in(self, precision: str) -> None:
        """bf16/fp16 training: frozen target networks (teachers) keep their weights in that dtype
        (cast once, not per op under autocast). fp32: nothing changes."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if dtype is not None:
            for target in self.targets.values():
                target.store_frozen_in(dtype)

    def set_fused_attn(self, enabled: bool) -> None:
        self.encoder.set_fused_attn(enabled)
        for decoder in self.decoders.values():
            decoder.set_fused_attn(enabled)

    def unused_parameter_names(self) -> List[str]:
        """Parameters no loss reaches: encoder blocks after the deepest head, and the final norm when no
        head reads it. DDP must be told (find_unused_parameters) only when this is not empty."""
        deepest = max(self.blocks)
        names = [n for n, _ in self.encoder.blocks.named_parameters() if int(n.split(".")[0]) >= deepest]
        names = [f"encoder.blocks.{n}" for n in names]
        if not any(self._uses_final_norm(h) for h in self.heads):
            names += [f"encoder.norm.{n}" for n, _ in self.encoder.norm.named_parameters()]
        return names

    def no_weight_decay(self) -> List[str]:
        """Parameter names exempt from weight decay beyond biases and norms (which are 1-D)."""
        names = ["encoder.cls_token", "encoder.pos_embed"]
        for key in self.decoders:
            names += [f"decoders.{key}.mask_token", f"decoders.{key}.pos_embed"]
        return names

    def forward(self, images: torch.Tensor, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None, taps: Iterable[int] = ()) -> PretrainOutput:
        """Mask, encode, decode at every supervised depth, score each head on the masked patches.

        noise: optional (N, L) tensor replacing the uniform draw (smallest noise = kept).
        taps: extra encoder blocks whose tokens to return in `.taps` (the loss is the same either way).
        """
        taps, masking = self.encoder(images, self.cfg.mask_ratio, noise, taps=sorted(set(self.blocks) | set(taps)),
                                     generator=generator)
        with torch.no_grad():
            target_values = {key: target(images, masking) for key, target in self.targets.items()}
        losses: Dict[int, torch.Tensor] = {}
        preds: Dict[int, torch.Tensor] = {}
        total = images.new_zeros((), dtype=torch.float32)
        for head in self.heads:
            feature = taps[head.block]
            if self._uses_final_norm(head):
                feature = self.encoder.norm(feature)
            pred = self.decoders[decoder_key(head.block)](feature, masking)
            key = self.head_target_key[head.block]
            loss = self.targets[key].loss(pred, target_values[key], masking.mask)
            losses[head.block], preds[head.block] = loss, pred
            total = total + head.weight * loss
        return PretrainOutput(total, losses, masking.mask, preds, masking, taps)

    def _uses_final_norm(self, head: HeadConfig) -> bool:
        return head.final_norm if head.final_norm is not None else head.block == self.encoder.depth


def validate_model_config(cfg: ModelConfig) -> None:
    """Refuse configurations that would fail deep inside a forward pass."""
    enc = cfg.encoder
    if not 0.0 < cfg.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
    if enc.embed_dim % enc.num_heads:
        raise ConfigError(f"model.encoder.embed_dim {enc.embed_dim} is not divisible by num_heads {enc.num_heads}")
    if enc.img_size % enc.patch_size:
        raise ConfigError(f"model.encoder.img_size {enc.img_size} is not a multiple of patch_size {enc.patch_size}")
    if not cfg.heads:
        raise ConfigError("model.heads is empty: give at least one supervised block")
    blocks = [h.block for h in cfg.heads]
    if len(set(blocks)) != len(blocks):
        raise ConfigError(f"model.heads: each block may be supervised once, got blocks {blocks}")
    for i, head in enumerate(cfg.heads):
        if not 1 <= head.block <= enc.depth:
            raise ConfigError(f"model.heads.{i}.block = {head.block} is outside 1..{enc.depth} (encoder depth)")
        if head.decoder_dim % head.decoder_heads:
            raise ConfigError(f"model.heads.{i}: decoder_dim {head.decoder_dim} is not divisible by "
                              f"decoder_heads {head.decoder_heads}")
    if cfg.attn_impl not in ("auto", "fused", "math", "measure"):
        raise ConfigError(f"model.attn_impl must be auto, fused, math or measure, got {cfg.attn_impl!r}")
