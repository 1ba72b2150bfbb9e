"""Hub-style persistence through huggingface_hub's `ModelHubMixin`, as timm and transformers users expect:

    model.save_pretrained("runs/x/hub")           config.json (the constructor's arguments), model.safetensors,
                                                  README.md (model card)
    DeepMIM.from_pretrained("runs/x/hub")         a folder, or a Hub repo id (downloaded and cached by huggingface_hub)
    DeepMIM.from_pretrained(path, mask_ratio=0.6) keyword overrides of the saved config
    model.push_to_hub("user/name")                the same folder, uploaded

huggingface_hub does the config, the model card, the download cache and the upload; deepmim writes the weights
(safetensors, atomically) and reads them back strictly: a missing, unknown or misshapen key is an error, never
silently skipped (PyTorchModelHubMixin's default loads with strict=False, and its pickle fallback is not needed).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import ModelHubMixin, hf_hub_download

from ..checkpoint import load_strict, read_state_file, save_weights

logger = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"
HUB_CARD = {
    "library_name": "deepmim",
    "license": "apache-2.0",
    "tags": ["vision", "deepmim"],
    "paper_url": "https://arxiv.org/abs/2303.08817",
}


class HubWeights(ModelHubMixin, **HUB_CARD):
    """The weights half of ModelHubMixin for deepmim's modules; a subclass builds itself from the saved
    config with `_from_config(**config_and_overrides)`."""

    def _save_pretrained(self, save_directory: Path) -> None:
        save_weights(self.state_dict(), Path(save_directory) / WEIGHTS_NAME, {"format": "pt"})

    @classmethod
    def _from_config(cls, **kwargs: Any):
        return cls(**kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: Optional[str],
        cache_dir,
        force_download: bool,
        local_files_only: bool,
        token,
        **model_kwargs: Any,
    ):
        if os.path.isdir(model_id):
            weights = Path(model_id) / WEIGHTS_NAME
        else:
            weights = Path(
                hf_hub_download(
                    repo_id=model_id,
                    filename=WEIGHTS_NAME,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                )
            )
        logger.debug("%s.from_pretrained: weights %s, config %s", cls.__name__, weights, model_kwargs)
        model = cls._from_config(**model_kwargs)
        load_strict(
            model, read_state_file(weights), context=f"'{weights}' does not fit the model its config.json describes"
        )
        return model
