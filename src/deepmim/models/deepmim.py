"""The DeepMIM wrapper: one encoder, one decoder per supervised depth, losses summed."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn

from ..config.loader import ConfigError, deep_merge, from_dict
from ..config.schema import EncoderConfig, HeadConfig, ModelConfig
from .decoder import MaskedDecoder
from .encoder import MaskedViTEncoder
from .head_names import decoder_key
from .hub import HubWeights
from .masking import Masking
from .target import Target, build_target, target_config


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


class DeepMIM(nn.Module, HubWeights, tags=["masked-image-modeling"]):
    """MAE when there is one head on the last block; DeepMIM with extra heads on earlier blocks.

    Targets are deliberately kept out of the module tree: a frozen teacher must never
    reach the optimizer or the checkpoint. `_apply` still moves them with the model.

    Hub-style persistence (models/hub.py): `save_pretrained(DIR)` writes the ModelConfig as config.json
    with the weights; `DeepMIM.from_pretrained(DIR_or_repo, **overrides)` rebuilds it (overrides as
    create_model's, e.g. mask_ratio=0.6); `push_to_hub(repo_id)` uploads the folder.
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
        self.decoders = nn.ModuleDict(
            {
                decoder_key(h.block): MaskedDecoder(
                    cfg.encoder.embed_dim,
                    self.encoder.num_patches,
                    h.decoder_dim,
                    h.decoder_depth,
                    h.decoder_heads,
                    out_dim=targets[self.head_target_key[h.block]].dim,
                    norm_eps=cfg.encoder.norm_eps,
                )
                for h in self.heads
            }
        )

    @classmethod
    def _from_config(cls, cfg, **overrides) -> "DeepMIM":
        """config.json's `cfg` (a ModelConfig as a dict) with keyword overrides -> the model."""
        cfg = cfg if isinstance(cfg, ModelConfig) else from_dict(ModelConfig, cfg, "model.")
        return cls(override_model_config(cfg, **overrides))

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
        """Parameter names exempt from weight decay beyond biases and norms (which are 1-D) under
        optim.no_decay_tokens=true; the authors' pre-training decays them (training/optim.py)."""
        names = ["encoder.cls_token", "encoder.pos_embed"]
        for key in self.decoders:
            names += [f"decoders.{key}.mask_token", f"decoders.{key}.pos_embed"]
        return names

    def forward(
        self,
        images: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        taps: Iterable[int] = (),
    ) -> PretrainOutput:
        """Mask, encode, decode at every supervised depth, score each head on the masked patches.

        noise: optional (N, L) tensor replacing the uniform draw (smallest noise = kept).
        taps: extra encoder blocks whose tokens to return in `.taps` (the loss is the same either way).
        """
        taps, masking = self.encoder(
            images, self.cfg.mask_ratio, noise, taps=sorted(set(self.blocks) | set(taps)), generator=generator
        )
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


MAX_PARAMETERS = 1e11  # far beyond any ViT trained; a size past it is a typo, and building it would fill the memory


def check_sizes(cfg: ModelConfig) -> None:
    """Every size of the model a positive whole number (or a positive finite ratio), and the model no
    larger than MAX_PARAMETERS: the first problem, naming its key."""
    enc = cfg.encoder
    sizes = {
        f"model.encoder.{k}": getattr(enc, k)
        for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
    }
    for i, head in enumerate(cfg.heads):
        sizes.update({f"model.heads.{i}.{k}": getattr(head, k) for k in ("decoder_dim", "decoder_heads")})
        sizes[f"model.heads.{i}.decoder_depth"] = head.decoder_depth + 1  # 0 decoder blocks is a valid choice
    for key, value in sizes.items():
        if value < 1:
            shown = value - 1 if key.endswith("decoder_depth") else value
            raise ConfigError(f"{key} must be at least {0 if key.endswith('decoder_depth') else 1}, got {shown}")
    for key, value in (("model.encoder.mlp_ratio", enc.mlp_ratio), ("model.encoder.norm_eps", enc.norm_eps)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{key} must be a positive number, got {value}")
    for i, head in enumerate(cfg.heads):
        if not (math.isfinite(head.weight) and head.weight >= 0):
            raise ConfigError(
                f"model.heads.{i}.weight must be 0 or more (the head's share of the loss), got "
                f"{head.weight}; a negative weight would train the model to reconstruct worse"
            )
    if cfg.heads and not any(head.weight > 0 for head in cfg.heads):
        raise ConfigError("every model.heads.N.weight is 0: no loss would train the model; give a head a weight")
    blocks = enc.depth * enc.embed_dim**2 * (4 + 2 * enc.mlp_ratio)
    blocks += sum(h.decoder_depth * h.decoder_dim**2 * (4 + 2 * enc.mlp_ratio) for h in cfg.heads)
    if blocks > MAX_PARAMETERS:
        raise ConfigError(
            f"model.encoder / model.heads describe a model of about {blocks:.3g} parameters, more "
            f"than {MAX_PARAMETERS:.0e}: check the sizes (embed_dim {enc.embed_dim}, depth {enc.depth}, "
            f"decoder_dim {[h.decoder_dim for h in cfg.heads]})"
        )


def validate_model_config(cfg: ModelConfig) -> None:
    """Refuse configurations that would fail deep inside a forward pass, or build nothing sensible."""
    enc = cfg.encoder
    check_sizes(cfg)
    for i, spec in enumerate([cfg.target] + [h.target for h in cfg.heads]):
        if spec is not None:
            target_config(spec, "model.target" if i == 0 else f"model.heads.{i - 1}.target")
    if not (math.isfinite(cfg.mask_ratio) and 0.0 < cfg.mask_ratio < 1.0):
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
            raise ConfigError(
                f"model.heads.{i}: decoder_dim {head.decoder_dim} is not divisible by "
                f"decoder_heads {head.decoder_heads}"
            )
    if cfg.attn_impl not in ("auto", "fused", "math", "measure"):
        raise ConfigError(f"model.attn_impl must be auto, fused, math or measure, got {cfg.attn_impl!r}")


ENCODER_KEYS = tuple(f.name for f in dataclasses.fields(EncoderConfig))
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def override_model_config(cfg: ModelConfig, **overrides: Any) -> ModelConfig:
    """`cfg` with keyword overrides, as timm's create_model takes them: a ModelConfig field (mask_ratio=0.6,
    target={...}, heads=[...]) or an encoder field given directly (img_size=64, depth=6); mappings
    are merged into the field, other values replace it. Unknown keys and wrong types are refused by name."""
    if not overrides:
        return cfg
    update: Dict[str, Any] = {}
    for key, value in overrides.items():
        if key in MODEL_KEYS:
            update[key] = value
        elif key in ENCODER_KEYS:
            update.setdefault("encoder", {})[key] = value
        else:
            raise ConfigError(
                f"create_model got an unknown keyword {key}={value!r}: the overrides are the fields of "
                f"ModelConfig ({', '.join(MODEL_KEYS)}) and of its encoder ({', '.join(ENCODER_KEYS)})"
            )
    return from_dict(ModelConfig, deep_merge(dataclasses.asdict(cfg), update), "model.")
