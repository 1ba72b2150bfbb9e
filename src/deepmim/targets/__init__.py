"""Reconstruction targets. Add one: a small module with a Target subclass decorated by
`@register_target("name")`, and an import line below."""
from .base import TARGETS, Target, build_target, masked_mean, patchify, register_target, unpatchify
from . import pixel  # noqa: F401  (registers "pixel")
from . import hog  # noqa: F401  (registers "hog")
from . import teacher  # noqa: F401  (registers "teacher")
from . import hybrid  # noqa: F401  (registers "hybrid")

__all__ = ["TARGETS", "Target", "build_target", "masked_mean", "patchify", "register_target", "unpatchify"]
