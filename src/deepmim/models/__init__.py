"""Models: the masked ViT encoder, the decoder, the DeepMIM wrapper, the target interface it consumes
(target.py), head naming, presets, checkpoint layouts and loading, export, the UperNet segmentor."""
from .decoder import MaskedDecoder
from .deepmim import DeepMIM, PretrainOutput, validate_model_config
from .encoder import MaskedViTEncoder
from .factory import create_model, expand_model_dict, resolve_model_config
from .loading import CheckpointError, load_checkpoint, load_weights
from .masking import Masking, random_masking
from .presets import list_presets, preset_config

__all__ = ["MaskedDecoder", "DeepMIM", "PretrainOutput", "validate_model_config", "MaskedViTEncoder",
           "create_model", "expand_model_dict", "resolve_model_config", "CheckpointError", "load_checkpoint",
           "load_weights", "Masking", "random_masking", "list_presets", "preset_config"]
