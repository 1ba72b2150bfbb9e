"""`deepmim export`: the weights of a checkpoint as safetensors, for every kind deepmim writes.

    pre-training (or bare weights)  the encoder in timm's VisionTransformer layout (models/export.py):
                                    timm.create_model(name, num_classes=0, checkpoint_path=...)
    fine-tuning                     the classifier as it is, a timm VisionTransformer with its head
    segmentation                    the UperNet model as it is (timm Beit backbone, neck, heads)
    linear-probe head               refused: a head alone is no model; export the encoder it probed

Weights without a deepmim config (MAE's, the authors', timm's) name their architecture with `preset`
(`--preset mae_vit_base`). `fmt="hf"` / `"hf-encoder"`: Hugging Face folders (tasks/export_hf.py).

Classifier and segmentation exports carry their checkpoint's task, config and architecture in the
metadata (deepmim.checkpoint.checkpoint_metadata), so they read back as the checkpoint they came
from: `deepmim evaluate` and `deepmim segment eval` take them as they take the .pt files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional

from ..checkpoint import Checkpoint, CheckpointError, checkpoint_metadata, read_checkpoint, save_weights
from ..config.loader import ConfigError
from ..models.export import export_encoder, timm_model_name
from ..models.hf import is_hf_folder
from ..models.loading import load_encoder
from .finetune import load_classifier
from .segment import load_segmentor


FORMATS = ("safetensors", "hf", "hf-encoder")


def export_checkpoint(checkpoint: str, out: str, img_size: Optional[int] = None, preset: Optional[str] = None,
                      fmt: str = "safetensors") -> str:
    """Write the weights of `checkpoint` to `out` (a .safetensors file, or a folder for the hf formats);
    returns how to load them, in one line."""
    from .export_hf import export_vit, export_vitmae

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    ckpt = read_checkpoint(checkpoint)
    if preset and ckpt.task not in (None,):
        raise ConfigError(f"--preset names the architecture of bare weights; {ckpt.name} is {ckpt.kind} and "
                          f"records its own")
    if fmt == "hf":
        return export_vitmae(ckpt, Path(out), img_size, preset)
    if fmt == "hf-encoder":
        return export_vit(ckpt, Path(out), img_size, preset)
    exporter = EXPORTERS.get(ckpt.task)
    if exporter is None:
        raise CheckpointError(f"{ckpt.name} is {ckpt.kind}: export writes models, and a probe head alone is "
                              f"none. Export the checkpoint it probed (linprobe.json names it) instead")
    return exporter(ckpt, Path(out), img_size, preset)


def export_pretrained(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset: Optional[str] = None) -> str:
    """The encoder alone (no decoders, no teacher file needed), position embedding resampled to img_size;
    `preset` names the architecture of bare weights."""
    if ckpt.task is None and preset is None and not is_hf_folder(ckpt.path):
        raise CheckpointError(f"{ckpt.name} holds no deepmim config: name its architecture with --preset NAME "
                              f"(e.g. --preset mae_vit_base; deepmim presets lists them)")
    encoder = load_encoder(ckpt.path, preset)
    path = export_encoder(encoder, out, img_size)
    name = timm_model_name(encoder)
    chans = encoder.cfg.in_chans
    extra = f", in_chans={chans}" if chans != 3 else ""
    hint = (f"timm.create_model('{name}', num_classes=0{extra}, checkpoint_path='{path}')" if name and
            (img_size or encoder.cfg.img_size) == 224 else
            f"a timm VisionTransformer with the same size (num_classes=0{extra})")
    return f"wrote {path}; load it with {hint}"


def export_classifier(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset=None) -> str:
    """A fine-tuned checkpoint is a timm VisionTransformer already: its weights as they are."""
    _no_resampling(ckpt, img_size, "timm resamples a classifier's position embedding itself when created "
                                   "with another img_size")
    model, cfg = load_classifier(ckpt.path)
    meta = {"format": "pt", "num_classes": str(model.num_classes), "global_pool": cfg.model.global_pool,
            "img_size": str(cfg.data.img_size), **checkpoint_metadata(ckpt)}
    save_weights(model.state_dict(), out, meta)
    return (f"wrote {out}; load it with a timm VisionTransformer of the same size, num_classes={model.num_classes}, "
            f"global_pool='{cfg.model.global_pool}' (or score it: deepmim evaluate {out})")


def export_segmentor(ckpt: Checkpoint, out: Path, img_size: Optional[int], preset=None) -> str:
    """A segmentation checkpoint: the UperNet model's weights as they are, its config in the metadata."""
    _no_resampling(ckpt, img_size, "a segmentation model keeps the crop size it was trained at")
    model, cfg, _ = load_segmentor(ckpt.path)
    meta = {"format": "pt", "num_classes": str(model.num_classes), "crop_size": str(cfg.data.crop_size),
            **checkpoint_metadata(ckpt)}
    save_weights(model.state_dict(), out, meta)
    return (f"wrote {out}: the UperNet weights (timm Beit backbone, neck, heads) with the config they were "
            f"trained with; score them: deepmim segment eval {out}")


def _no_resampling(ckpt: Checkpoint, img_size: Optional[int], why: str) -> None:
    if img_size:
        raise ConfigError(f"--img-size applies to pre-trained encoders; {ckpt.name} is {ckpt.kind}: {why}")


EXPORTERS: Dict[Optional[str], Callable[..., str]] = {
    "pretrain": export_pretrained, None: export_pretrained, "finetune": export_classifier,
    "segment": export_segmentor}
