"""Reconstruction targets. Add one: a small module with a Target subclass decorated by
`@register_target("name")`, and an import line below."""

from . import (
    hog,  # noqa: F401  (registers "hog")
    hybrid,  # noqa: F401  (registers "hybrid")
    pixel,  # noqa: F401  (registers "pixel")
    teacher,  # noqa: F401  (registers "teacher")
)
from .base import TARGETS, Target, build_target, masked_mean, patchify, register_target, unpatchify

__all__ = ["TARGETS", "Target", "build_target", "masked_mean", "patchify", "register_target", "unpatchify"]
