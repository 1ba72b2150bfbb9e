"""Hybrid pixel target (DeepMIM paper): alpha * raw patches + (1 - alpha) * the reconstruction
of a frozen pre-trained MAE/deepmim model, which sees the SAME masking as the student.

The frozen model is its encoder plus the decoder of its final (highest) head; its target must
be pixels with the same norm_pix, so both parts live in one space. Heads of one student that
name the same file share one frozen copy and one frozen forward per batch (the paper's three
extra heads differ only in alpha).
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..checkpoint import CheckpointError, read_checkpoint
from ..config.loader import ConfigError
from ..models.convert import convert_state_dict
from ..models.deepmim import DeepMIM
from ..models.head_names import decoder_key
from ..models.loading import load_weights
from ..models.masking import Masking
from ..models.presets import preset_config
from .base import register_target
from .pixel import PixelConfig, PixelTarget


@dataclass
class HybridConfig(PixelConfig):
    path: Optional[str] = None  # a deepmim checkpoint (with its config) of the frozen model
    alpha: float = 0.0  # weight of the raw patches; 1 - alpha goes to the frozen reconstruction
    preset: Optional[str] = None  # the model in `path` when the file holds no deepmim config (MAE's release)


class FrozenReconstructor(nn.Module):
    """Encoder + final decoder of a saved model, frozen; remembers its last batch's output."""

    def __init__(self, path: str, preset: Optional[str] = None):
        super().__init__()
        ckpt = read_checkpoint(path)
        cfg = ckpt.model_config() or (preset_config(preset) if preset else None)
        if cfg is None:
            raise CheckpointError(
                f"hybrid target: '{path}' holds no deepmim config; name the model it holds "
                f"with `preset` (e.g. mae_vit_base for MAE's released *_full.pth)"
            )
        final = max(cfg.heads, key=lambda h: h.block)
        spec = dict(final.target if final.target is not None else cfg.target)
        if spec.get("name") != "pixel":
            raise ConfigError(f"hybrid target: the final head of '{path}' predicts {spec}, not pixels")
        # Only the final head is needed: build that alone (other heads' targets could be anything).
        state, _ = convert_state_dict(ckpt.model_state, sorted(h.block for h in cfg.heads))
        cfg = dataclasses.replace(cfg, heads=[dataclasses.replace(final, target=None)], target=spec)
        self.spec, self.block = spec, final.block
        self.model = DeepMIM(cfg)
        if not any(k.startswith(f"decoders.{decoder_key(final.block)}.") for k in state):
            raise CheckpointError(
                f"hybrid target: '{path}' holds no weights for the final decoder (block "
                f"{final.block}); an encoder-only file cannot reconstruct"
            )
        own = self.model.state_dict()
        load_weights(self.model, {k: v for k, v in state.items() if k in own})
        self.requires_grad_(False)
        self.eval()
        self._last = None

    def train(self, mode: bool = True) -> "FrozenReconstructor":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masking: Masking) -> torch.Tensor:
        """(N, L, p*p*C) predictions for every patch, computed once per (images, masking)."""
        last = self._last
        if last is not None and last[0]() is images and last[1]() is masking.ids_keep and last[2] == images._version:
            return last[3]
        enc = self.model.encoder
        x = enc.embed(images, masking)
        for block in enc.blocks[: self.block]:
            x = block(x)
        if self.model._uses_final_norm(self.model.heads[0]):
            x = enc.norm(x)
        pred = self.model.decoders[decoder_key(self.block)](x, masking).float()
        self._last = (weakref.ref(images), weakref.ref(masking.ids_keep), images._version, pred)
        return pred


_SHARED: "weakref.WeakValueDictionary[str, FrozenReconstructor]" = weakref.WeakValueDictionary()


def shared_reconstructor(path: str, preset: Optional[str] = None) -> FrozenReconstructor:
    """One frozen model per file and process, while some target uses it."""
    key = f"{Path(path).resolve()}|{preset}"
    frozen = _SHARED.get(key)
    if frozen is None:
        frozen = FrozenReconstructor(path, preset)
        _SHARED[key] = frozen
    return frozen


@register_target("hybrid")
class HybridTarget(PixelTarget):
    Config = HybridConfig
    needs_weights = True

    def __init__(self, cfg: HybridConfig, patch_size: int, in_chans: int):
        super().__init__(cfg, patch_size, in_chans)
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"hybrid target: alpha must be in [0, 1], got {cfg.alpha}")
        if not cfg.path:
            raise ConfigError("hybrid target: set `path` to the frozen pre-trained model's checkpoint")
        self.frozen = shared_reconstructor(cfg.path, cfg.preset)
        spec, enc = self.frozen.spec, self.frozen.model.encoder.cfg
        if bool(spec.get("norm_pix", True)) != cfg.norm_pix:
            raise ConfigError(
                f"hybrid target: the frozen model's final head predicts {spec}; it must be "
                f"{{'name': 'pixel', 'norm_pix': {cfg.norm_pix}}} to mix with this target's pixels"
            )
        if (enc.patch_size, enc.in_chans) != (patch_size, in_chans):
            raise ConfigError(
                f"hybrid target: the frozen model has patch {enc.patch_size} and {enc.in_chans} "
                f"channels, the student patch {patch_size} and {in_chans} channels; they must match"
            )

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masking: Masking) -> torch.Tensor:
        raw = super().forward(images, masking)
        if self.cfg.alpha == 1.0:
            return raw
        size = self.frozen.model.encoder.cfg.img_size
        if tuple(images.shape[-2:]) != (size, size):
            raise ConfigError(
                f"hybrid target: the frozen model takes {size}x{size} images, got {tuple(images.shape[-2:])}"
            )
        return self.cfg.alpha * raw + (1.0 - self.cfg.alpha) * self.frozen(images, masking)
