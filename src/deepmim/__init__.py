"""deepmim: masked image modeling with deep supervision (DeepMIM, WACV 2025) for Vision Transformers.

Importing the package imports `deepmim.targets`, whose modules register the built-in reconstruction
targets with the registry DeepMIM builds its heads' targets from (models/target.py).
"""
from . import targets
from .models import DeepMIM, create_model, list_presets, load_checkpoint

__version__ = "0.1.0"
__all__ = ["DeepMIM", "create_model", "list_presets", "load_checkpoint", "__version__"]
