"""Key maps from released checkpoint layouts to deepmim's names.

Supported layouts (detected from the keys):
- deepmim: `encoder.*`, `decoders.<block>.*` (our own checkpoints);
- authors' DeepMIM release (MAE fork): `decoder_embed{k}`, `mask_token{k}`, `decoder_blocks{k}.N`,
  `decoder_norm{k}`, `decoder_pred{k}` for k = 1..4 = the supervised blocks in increasing depth,
  one shared `decoder_pos_embed`;
- MAE: `decoder_embed`, `mask_token`, `decoder_blocks.N`, `decoder_norm`, `decoder_pred`,
  `decoder_pos_embed` for the single final decoder; or encoder keys only;
- timm ViT: encoder keys (`patch_embed.*`, `blocks.N.*`, ...) with an optional classifier head;
- Hugging Face transformers: `ViTMAEForPreTraining` (`vit.*`, `decoder.*`) and `ViTModel` folders, in
  transformers 4's names (the released ViTMAE models) or 5's (models/hf.py).
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

import torch

from ..checkpoint import strip_module_prefix
from .head_names import decoder_key
from .hf import from_hf_state, is_hf_state

ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
CLASSIFIER_PREFIXES = ("head.", "fc_norm.", "head_drop.")
_DECODER_PARTS = {
    "decoder_embed": "embed",
    "mask_token": "mask_token",
    "decoder_blocks": "blocks",
    "decoder_norm": "norm",
    "decoder_pred": "pred",
}
_NUMBERED = re.compile(r"^(decoder_embed|mask_token|decoder_blocks|decoder_norm|decoder_pred)(\d*)(.*)$")


def detect_layout(state: Dict[str, torch.Tensor]) -> str:
    keys = list(state)
    if is_hf_state(state):  # first: a ViTModel's keys start with `encoder.` too
        return "hf"
    if any(k.startswith(("encoder.", "decoders.")) for k in keys):
        return "deepmim"
    if any(re.match(r"^decoder_embed\d+\.", k) for k in keys):
        return "deepmim_authors"
    if any(k.startswith("decoder_embed.") for k in keys):
        return "mae"
    return "encoder"


def convert_state_dict(state: Dict[str, torch.Tensor], blocks: List[int]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Map any supported layout onto deepmim keys for a model supervising `blocks` (sorted).

    Returns (converted state, notes about what was dropped on purpose)."""
    state = strip_module_prefix(state)
    layout = detect_layout(state)
    if layout == "deepmim":
        return dict(state), []
    if layout == "hf":
        return from_hf_state(state, blocks[-1] if blocks else None)
    out: Dict[str, torch.Tensor] = {}
    notes: List[str] = []
    dropped = [k for k in state if k.startswith(CLASSIFIER_PREFIXES)]
    if dropped:
        notes.append(f"dropped the classifier head ({', '.join(dropped)}): pre-training models have none")
    for key, value in state.items():
        if key.startswith(CLASSIFIER_PREFIXES):
            continue
        if key == "decoder_pos_embed":  # one shared embedding -> every decoder's copy
            for block in blocks:
                out[f"decoders.{decoder_key(block)}.pos_embed"] = value
            continue
        match = _NUMBERED.match(key)
        if match and layout != "encoder":
            part, number, rest = match.groups()
            block = _block_for(number, blocks, key)
            out[f"decoders.{decoder_key(block)}.{_DECODER_PARTS[part]}{rest}"] = value
        else:
            out[f"encoder.{key}"] = value
    return out, notes


def _block_for(number: str, blocks: List[int], key: str) -> int:
    """decoder k (1-based, increasing depth) -> the k-th supervised block; unnumbered -> the last."""
    if not number:
        return blocks[-1]
    k = int(number)
    if not 1 <= k <= len(blocks):
        raise KeyError(
            f"checkpoint key '{key}' names decoder {k}, but the model has {len(blocks)} decoders (blocks {blocks})"
        )
    return blocks[k - 1]
