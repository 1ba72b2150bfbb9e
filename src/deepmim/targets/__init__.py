"""Reconstruction targets. Add one: a small module with a Target subclass decorated by
`@register_target("name")`, and an import line below."""
from .base import TARGETS, Target, build_target, masked_mean, patchify, register_target, unpatchify
from . import pixel  # noqa: F401  (registers "pixel")

__all__ = ["TARGETS", "Target", "build_target", "masked_mean", "patchify", "register_target", "unpatchify"]
