"""`deepmim finetune` (classification from a pre-trained encoder) and `deepmim evaluate` (its checkpoints)."""

from __future__ import annotations

import argparse

from .arguments import is_rank_zero
from .pretrain import training_result_line

FINETUNE_HELP = (
    "The authors' ImageNet recipe (finetune_vit_base_in1k) or your own:\n\n"
    "  deepmim finetune --config finetune_demo model.checkpoint=runs/demo/checkpoint-last.pt\n"
    "  deepmim finetune --config finetune_vit_base_in1k model.checkpoint=deepmim_clip.pth "
    "data.path=/data/imagenet\n\n"
    "model.checkpoint takes our checkpoints, the authors', MAE's or timm weights "
    "(with model.preset naming the architecture when the file has no deepmim config)."
)


# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 60
SUMMARY = """\
  finetune   the MAE/BEiT fine-tuning recipe (layer decay, RandAugment, Mixup/CutMix, EMA), eval every epoch
  evaluate   top-1/top-5/loss of a fine-tuned checkpoint
"""


def add_parser(subparsers) -> None:
    f = subparsers.add_parser(
        "finetune",
        help="fine-tune a pre-trained encoder for classification",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=FINETUNE_HELP,
    )
    f.add_argument("--config", "-c", metavar="RECIPE", help="bundled finetune recipe or YAML path")
    f.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    f.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=10")
    f.set_defaults(handler=finetune)
    v = subparsers.add_parser("evaluate", help="evaluate a fine-tuned checkpoint")
    v.add_argument("checkpoint", help="a checkpoint written by deepmim finetune")
    v.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.path=/data/imagenet val_split=val")
    v.add_argument("--out", metavar="FILE", default=None, help="write the scores and the data scored as JSON")
    v.set_defaults(handler=evaluate)


def finetune(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.finetune import load_finetune_config, run_finetune

    cfg = load_finetune_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    result = run_finetune(cfg)
    if is_rank_zero():
        print(training_result_line("finetune", result))
    return 0


def evaluate(args) -> int:
    from ..tasks.finetune import evaluate_checkpoint
    from ..tasks.scored_data import data_line

    metrics, data = evaluate_checkpoint(args.checkpoint, args.overrides)
    print(data_line(data))
    print(" ".join(f"{k} {v:.4f}" if k != "images" else f"images {int(v)}" for k, v in metrics.items()))
    if args.out:
        from pathlib import Path

        from ..training.jsonfile import dumps

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(dumps({"checkpoint": args.checkpoint, "data": data, **metrics}))
        print(f"wrote {args.out}")
    return 0
