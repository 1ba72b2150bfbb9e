"""OpenAI / open_clip CLIP image towers (OpenAI's state-dict layout) -> timm ViT + projection.

The dimensions are read from the weight shapes; the head count is not in the weights, so it
is width // 64 as in CLIP (override with num_heads, e.g. open_clip's ViT-H-14 has 80-wide heads).
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple

import torch
from timm.models.vision_transformer import VisionTransformer, _convert_openai_clip
from torch import nn

from ...checkpoint import CheckpointError, load_strict, read_checkpoint
from .net import MISFIT

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

TORCHSCRIPT_HINT = (
    "OpenAI's released .pt files are TorchScript archives: save a plain state dict first, "
    "torch.save(torch.jit.load(path, map_location='cpu').state_dict(), 'clip_state.pt')"
)


def visual_weights(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The image tower's keys without the 'visual.' prefix (a full CLIP or a bare image tower)."""
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    if "conv1.weight" not in state or "class_embedding" not in state:
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(
            f"not a CLIP image tower in OpenAI's layout (no visual.conv1.weight / "
            f"visual.class_embedding; keys start with: {sample})"
        )
    return state


def load_clip(
    path: str, quick_gelu: bool, num_heads: Optional[int] = None
) -> Tuple[VisionTransformer, Optional[torch.Tensor]]:
    try:
        state = visual_weights(read_checkpoint(path).model_state)
    except CheckpointError as err:
        raise CheckpointError(f"{err}. {TORCHSCRIPT_HINT}") from err
    width = state["class_embedding"].shape[0]
    patch = state["conv1.weight"].shape[-1]
    grid = int(round((state["positional_embedding"].shape[0] - 1) ** 0.5))
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    hidden = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    vit = VisionTransformer(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=state["conv1.weight"].shape[1],
        num_classes=0,
        embed_dim=width,
        depth=layers,
        num_heads=num_heads or width // 64,
        mlp_ratio=hidden / width,
        pre_norm=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
        act_layer="quick_gelu" if quick_gelu else "gelu",
    )
    timm_state = _convert_openai_clip({f"visual.{k}": v for k, v in state.items()}, vit)
    proj = timm_state.pop("head.weight", None)  # CLIP's image projection, as timm's head
    proj = proj.t().contiguous() if proj is not None else None  # (width, out): tokens @ proj
    timm_state.pop("head.bias", None)
    load_strict(vit, timm_state, context=MISFIT)
    return vit, proj
