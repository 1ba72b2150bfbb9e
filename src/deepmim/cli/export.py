"""`deepmim export CHECKPOINT --out PATH`: a checkpoint's weights as safetensors, a timm or a transformers folder."""

from __future__ import annotations

import argparse

HELP = """\
Write a checkpoint's weights as safetensors. A pre-training checkpoint gives
its encoder in timm's VisionTransformer layout:

  deepmim export runs/demo/checkpoint-last.pt --out encoder.safetensors
  deepmim export runs/demo/checkpoint-last.pt --format timm --out runs/demo/timm
  timm.create_model('local-dir:runs/demo/timm', pretrained=True)

Every export carries the preprocessing the weights were trained with (mean/std,
input size, crop, interpolation) and prints the exact call that loads it.

A fine-tuning checkpoint gives the timm classifier as it is, a segmentation
checkpoint the UperNet model as it is; both keep their config in the file's
metadata, so 'deepmim evaluate' / 'deepmim segment eval' read them back.

  deepmim export mae_pretrain_vit_base.pth --preset mae_vit_base --out enc.safetensors
  deepmim export runs/mae/checkpoint-last.pt --format hf --out runs/mae/hf
  transformers.ViTMAEForPreTraining.from_pretrained('runs/mae/hf')"""


# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 30
SUMMARY = """\
  export     a checkpoint's weights as safetensors: the encoder for timm.create_model(..., checkpoint_path=),
             or the fine-tuned classifier / segmentation model as it is; --format hf: a transformers folder
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    e = subparsers.add_parser(
        "export",
        help="export a checkpoint's weights as safetensors (encoder for timm, classifier, segmentation model)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=HELP,
    )
    e.add_argument(
        "checkpoint",
        help="a checkpoint of deepmim pretrain, finetune or segment train, or bare weights "
        "(MAE's, the authors', timm's, a Hugging Face ViTMAE folder)",
    )
    e.add_argument(
        "--out", required=True, help="output .safetensors path (a folder for --format timm / hf / hf-encoder)"
    )
    e.add_argument("--img-size", type=int, default=None, help="resample the position embedding to this size")
    e.add_argument(
        "--preset",
        default=None,
        help="the architecture of weights without a deepmim config, e.g. mae_vit_base (deepmim presets lists them)",
    )
    e.add_argument(
        "--format",
        default="safetensors",
        choices=("safetensors", "timm", "hf", "hf-encoder"),
        help="safetensors (timm layout, default) | timm: a folder for timm.create_model('local-dir:OUT', "
        "pretrained=True) | hf: a transformers folder (ViTMAEForPreTraining for MAE-layout models, "
        "ViTForImageClassification for cls-token classifiers) | hf-encoder: a transformers ViTModel "
        "folder",
    )
    e.set_defaults(handler=run)
    return e


def run(args) -> int:
    from ..tasks.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, args.img_size, args.preset, args.format))
    return 0
