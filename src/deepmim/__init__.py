"""deepmim: masked image modeling with deep supervision (DeepMIM, WACV 2025) for Vision Transformers.

The package imports lazily, so `deepmim --help`, `deepmim recipes` and `deepmim presets` answer without
loading torch or timm: `DeepMIM`, `create_model`, `list_presets` and `load_checkpoint` are imported on
first use. `load_builtin_targets` imports `deepmim.targets`, whose modules register the built-in
reconstruction targets with the registry DeepMIM builds its heads' targets from (models/target.py);
the registry calls it on its first lookup, and the names above call it before they are handed out.
"""

from __future__ import annotations

from .training.console import configure_console

configure_console()  # the `deepmim` logger's console handler at INFO (training/console.py; the CLI sets the level)

__version__ = "0.1.0"
__all__ = ["DeepMIM", "create_model", "list_presets", "load_checkpoint", "__version__"]
_FROM_MODELS = ("DeepMIM", "create_model", "list_presets", "load_checkpoint")


def load_builtin_targets() -> None:
    """Register the built-in targets (pixel, hog, teachers, hybrid): importing deepmim.targets does it."""
    from . import targets  # noqa: F401


def __getattr__(name: str):
    if name in _FROM_MODELS:
        load_builtin_targets()
        from . import models

        value = getattr(models, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
