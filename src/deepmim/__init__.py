"""deepmim: masked image modeling with deep supervision (DeepMIM, WACV 2025) for Vision Transformers."""
from .models import DeepMIM, create_model, list_presets, load_checkpoint

__version__ = "0.1.0"
__all__ = ["DeepMIM", "create_model", "list_presets", "load_checkpoint", "__version__"]
