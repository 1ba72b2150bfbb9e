"""Named model presets. Each is a ModelConfig; recipes start from one with `model.preset`."""

from __future__ import annotations

import copy
import difflib
from typing import Callable, Dict, List

from ..config.loader import ConfigError
from ..config.schema import EncoderConfig, HeadConfig, ModelConfig

# (embed_dim, depth, heads): the ViT sizes of the MAE / DeepMIM papers, plus a micro one for CPUs.
VIT_SIZES = {
    "micro": (128, 6, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
PAPER_EXTRA_BLOCKS = (6, 8, 10)  # of 12: the paper's intermediate supervision


def extra_blocks(depth: int) -> List[int]:
    """The paper's blocks 6/8/10 of 12, scaled to another depth (24 -> 12/16/20, 6 -> 3/4/5)."""
    return [round(b * depth / 12) for b in PAPER_EXTRA_BLOCKS]


def _vit(size: str, img_size: int, patch_size: int) -> EncoderConfig:
    dim, depth, heads = VIT_SIZES[size]
    return EncoderConfig(img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth, num_heads=heads)


def _mim(encoder: EncoderConfig, deep: bool, final: HeadConfig, extra: HeadConfig) -> ModelConfig:
    heads = [HeadConfig(**{**final.__dict__, "block": encoder.depth})]
    if deep:
        heads = [HeadConfig(**{**extra.__dict__, "block": b}) for b in extra_blocks(encoder.depth)] + heads
    return ModelConfig(encoder=encoder, heads=heads, target={"name": "pixel", "norm_pix": True})


def _paper(size: str, deep: bool) -> ModelConfig:
    """224px, patch 16. Base and up: MAE's 8x512 final decoder, 4x512 extra decoders."""
    width = 512 if size in ("base", "large") else 256
    final = HeadConfig(decoder_dim=width, decoder_depth=8, decoder_heads=16 if width == 512 else 8)
    extra = HeadConfig(decoder_dim=width, decoder_depth=4, decoder_heads=final.decoder_heads)
    return _mim(_vit(size, 224, 16), deep, final, extra)


def _hog(cfg: ModelConfig) -> ModelConfig:
    """MaskFeat's HOG target (9 bins, 8x8 cells) in place of pixels."""
    cfg.target = {"name": "hog", "orientations": 9, "cell_size": 8}
    return cfg


def _cpu(size: str, img_size: int, deep: bool) -> ModelConfig:
    """Patch-4 models for 32x32 / 28x28 images. The decoders see every patch (4x the encoder's
    tokens), so they dominate the cost: keep them light (64 wide; 2 blocks final, 1 block extra,
    the paper's 2:1 depth ratio)."""
    final = HeadConfig(decoder_dim=64, decoder_depth=2, decoder_heads=2)
    extra = HeadConfig(decoder_dim=64, decoder_depth=1, decoder_heads=2)
    return _mim(_vit(size, img_size, 4), deep, final, extra)


def _clip(size: str, deep: bool) -> ModelConfig:
    """The released DeepMIM-CLIP model (deep=True): 4-block 512-wide decoders on blocks 6/8/10/12,
    each predicting the 512-d tokens of a frozen OpenAI CLIP ViT-B/16 (2 - 2cos loss). deep=False:
    MAE-CLIP, the same target on the last block only. Set target.path to the CLIP weights to train."""
    width = 512 if size in ("base", "large") else 256
    head = HeadConfig(decoder_dim=width, decoder_depth=4, decoder_heads=16 if width == 512 else 8)
    cfg = _mim(_vit(size, 224, 16), deep, head, head)
    cfg.target = {"name": "teacher", "kind": "openai_clip", "path": None, "dim": 512, "loss": "cosine"}
    return cfg


PRESETS: Dict[str, Callable[[], ModelConfig]] = {}
for _size in ("tiny", "small", "base", "large"):
    PRESETS[f"mae_vit_{_size}"] = lambda s=_size: _paper(s, deep=False)
    PRESETS[f"deepmim_pixel_vit_{_size}"] = lambda s=_size: _paper(s, deep=True)
    PRESETS[f"mae_clip_vit_{_size}"] = lambda s=_size: _clip(s, deep=False)
    PRESETS[f"deepmim_clip_vit_{_size}"] = lambda s=_size: _clip(s, deep=True)
    PRESETS[f"mae_hog_vit_{_size}"] = lambda s=_size: _hog(_paper(s, deep=False))
    PRESETS[f"deepmim_hog_vit_{_size}"] = lambda s=_size: _hog(_paper(s, deep=True))
for _size in ("micro", "tiny"):
    for _img in (32, 28):
        PRESETS[f"mae_vit_{_size}_p4_{_img}"] = lambda s=_size, i=_img: _cpu(s, i, deep=False)
        PRESETS[f"deepmim_pixel_vit_{_size}_p4_{_img}"] = lambda s=_size, i=_img: _cpu(s, i, deep=True)


def list_presets() -> List[str]:
    return sorted(PRESETS)


def preset_config(name: str) -> ModelConfig:
    if not isinstance(name, str):
        raise ConfigError(f"model.preset must be a preset name (deepmim presets lists them), got {name!r}")
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model preset '{name}'.{hint} Known presets: {', '.join(list_presets())}")
    cfg = PRESETS[name]()
    cfg.preset = name
    return copy.deepcopy(cfg)
