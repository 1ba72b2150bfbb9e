"""Teacher target (the released DeepMIM-CLIP): token features of a frozen network on the full,
unmasked image. The student's input is un-normalised, resized so the teacher's token grid is the
student's patch grid, and normalised the teacher's way. Runs without grad, in the caller's autocast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..config.loader import ConfigError
from ..config.schema import IMAGENET_MEAN, IMAGENET_STD
from ..models.masking import Masking
from .base import Target, masked_mean, register_target
from .teachers import load_teacher

LOSSES = ("cosine", "mse", "smooth_l1")


@dataclass
class TeacherConfig:
    kind: str = "openai_clip"  # openai_clip | open_clip | timm | deepmim
    path: Optional[str] = None  # local weights file (.pt/.pth weights-only, or .safetensors)
    # kind=timm: the timm model name. open_clip: the architecture name, only read for '-quickgelu'.
    model: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # kind=timm: extra timm.create_model arguments
    num_heads: Optional[int] = None  # CLIP / MAE / bare encoders: default width // 64
    quick_gelu: Optional[bool] = None  # CLIP activation; default True for openai_clip, False for open_clip
    loss: str = "cosine"  # cosine: 2 - 2 cos per token (the authors') | mse | smooth_l1 (beta 1)
    # The student's input normalisation (deepmim fills it from data.mean / data.std).
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # The teacher's input normalisation; default: CLIP's for CLIP, timm's pretrained_cfg for timm,
    # the checkpoint's data config (else ImageNet's) for deepmim.
    teacher_mean: Optional[List[float]] = None
    teacher_std: Optional[List[float]] = None
    # The teacher's feature width. With it, a model builds without the teacher file (to load,
    # inspect or export weights); training then asks for `path`. Checked against the file when both are given.
    dim: Optional[int] = None


@register_target("teacher")
class TeacherTarget(Target):
    Config = TeacherConfig
    needs_weights = True

    def __init__(self, cfg: TeacherConfig, patch_size: int, in_chans: int):
        super().__init__(cfg, patch_size, in_chans)
        if cfg.loss not in LOSSES:
            raise ConfigError(f"teacher target: loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
        if cfg.path is None and cfg.dim is not None:
            self.net = None  # weights-only use of the model: no teacher needed until training
            self.eval()
            return
        self.net, default_mean, default_std = load_teacher(cfg)
        if cfg.dim is not None and cfg.dim != self.net.out_dim:
            raise ConfigError(
                f"teacher target: dim={cfg.dim} but the teacher in {cfg.path} gives {self.net.out_dim}-d features"
            )
        teacher_mean = cfg.teacher_mean or default_mean
        teacher_std = cfg.teacher_std or default_std
        teacher_chans = self.net.in_chans
        if in_chans not in (teacher_chans, 1):
            raise ConfigError(f"teacher target: the student has {in_chans} input channels, the teacher {teacher_chans}")
        for name, values, n in (
            ("mean", cfg.mean, in_chans),
            ("std", cfg.std, in_chans),
            ("teacher_mean", teacher_mean, teacher_chans),
            ("teacher_std", teacher_std, teacher_chans),
        ):
            if len(values) != n:
                raise ConfigError(f"teacher target: {name} needs {n} values, got {list(values)}")
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.eval()

    @property
    def dim(self) -> int:
        return self.net.out_dim if self.net is not None else self.cfg.dim

    def store_frozen_in(self, dtype: torch.dtype) -> None:
        """The frozen teacher's weights in `dtype` (bf16/fp16 training): its forward then runs without
        per-op weight casts; its features are returned as float32 as before."""
        if self.net is not None:
            self.net.to(dtype)

    def train(self, mode: bool = True) -> "TeacherTarget":
        return super().train(False)  # a frozen teacher stays in eval mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masking: Optional[Masking] = None) -> torch.Tensor:
        if self.net is None:
            raise ConfigError(
                "teacher target: no teacher weights loaded; set the target's path to the teacher's "
                "weights file (e.g. model.target.path=/weights/clip_vit_b16.pt)"
            )
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        size = self.net.input_size_for(grid)
        pixels = images.float() * self.std.float() + self.mean.float()
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        if pixels.shape[1] != self.net.in_chans:  # grey student, colour teacher
            pixels = pixels.expand(-1, self.net.in_chans, -1, -1)
        x = (pixels - self.teacher_mean.float()) / self.teacher_std.float()
        tokens = self.net(x.to(self.net.vit.patch_embed.proj.weight.dtype))
        if tokens.shape[1] != grid[0] * grid[1]:
            raise ConfigError(
                f"teacher target: the teacher gave {tokens.shape[1]} tokens for a {grid[0]}x{grid[1]} "
                f"student patch grid; use a teacher whose tokens form a plain patch grid"
            )
        return tokens.float()

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return token_loss(self.cfg.loss, pred, target, mask)


def token_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token loss averaged over the masked tokens. cosine: 2 - 2 cos(pred, target)."""
    pred = pred.float()
    if kind == "cosine":
        per_token = 2 - 2 * (F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(dim=-1)
    elif kind == "mse":
        per_token = ((pred - target) ** 2).mean(dim=-1)
    elif kind == "smooth_l1":
        per_token = F.smooth_l1_loss(pred, target, reduction="none").mean(dim=-1)
    else:
        raise ConfigError(f"teacher target: loss must be one of {', '.join(LOSSES)}, got {kind!r}")
    return masked_mean(per_token, mask)
