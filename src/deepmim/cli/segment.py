"""`deepmim segment train|eval`: UperNet semantic segmentation on a pre-trained ViT."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import is_rank_zero

TRAIN_HELP = """\
Train UperNet on a pre-trained ViT (iteration-based; validation every train.eval_every iterations):

  deepmim segment train --config upernet_demo                          # CPU, embedded shapes with masks
  deepmim segment train --config upernet_vit_base_ade20k model.checkpoint=deepmim_clip.pth \\
      model.preset=deepmim_clip_vit_base data.path=/data/ADEChallengeData2016
  torchrun --nproc_per_node=8 -m deepmim segment train --config upernet_vit_base_ade20k ...

Outputs in train.output_dir: checkpoint-last.pt (resumable with train.resume=auto), config.yaml,
metrics.jsonl (train and eval rows: mIoU, mAcc, aAcc), eval.json (last scores, per class).
Config sections: model, data (embedded | ade20k | maskfolder), optim, train, eval."""

EVAL_HELP = """\
Score a checkpoint written by 'deepmim segment train' on its validation split:

  deepmim segment eval runs/upernet_demo/checkpoint-last.pt
  deepmim segment eval CKPT eval.mode=whole eval.flip=true --save-predictions runs/preds

Prints aAcc / mIoU / mAcc and a per-class IoU / Acc table; --out writes them as JSON."""


# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 70
SUMMARY = """\
  segment    semantic segmentation: UperNet on a pre-trained ViT (train, eval: mIoU), the ADE20K protocol
"""


def add_parser(subparsers) -> None:
    segment = subparsers.add_parser(
        "segment",
        help="semantic segmentation: UperNet on a pre-trained ViT",
        description="UperNet on a pre-trained ViT, the ADE20K protocol of the paper.",
    )
    segment.set_defaults(handler=run)
    sub = segment.add_subparsers(dest="segment_command", metavar="ACTION", required=True)
    t = sub.add_parser(
        "train",
        help="train a segmentation model",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", "-c", metavar="RECIPE", help="bundled segment recipe or YAML path")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.iterations=400")
    e = sub.add_parser(
        "eval",
        help="score a segmentation checkpoint",
        description=EVAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("checkpoint", help="a checkpoint written by deepmim segment train")
    e.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.path=... eval.mode=whole")
    e.add_argument(
        "--save-predictions",
        metavar="DIR",
        default=None,
        help="write image | prediction | label PNGs (colourised) into DIR",
    )
    e.add_argument("--out", metavar="FILE", default=None, help="write the scores as JSON")


def run(args) -> int:
    if args.segment_command == "train":
        return _train(args)
    return _eval(args)


def _train(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.segment import format_scores, load_segment_config, run_segment_train

    cfg = load_segment_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    result, scores = run_segment_train(cfg)
    if not is_rank_zero():
        return 0
    if result.step == result.start_step:
        state = f"nothing trained, the run had already reached iteration {result.step}"
    else:
        state = "finished" if result.finished else f"stopped at iteration {result.step} (train.max_steps)"
    print(f"segment train {state}: {result.step} iterations, checkpoint {result.checkpoint}")
    if scores:
        print(format_scores(scores, scores["classes"]))
    return 0


def _eval(args) -> int:
    from ..tasks.segment import format_scores, run_segment_eval

    overrides = list(args.overrides)
    if args.save_predictions:
        overrides.append(f"eval.save_predictions={args.save_predictions}")
    from ..tasks.scored_data import data_line
    from ..training.jsonfile import dumps

    scores, names = run_segment_eval(args.checkpoint, overrides)
    if not is_rank_zero():
        return 0
    print(data_line(scores["data"]))
    print(format_scores(scores, names))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(dumps({"checkpoint": args.checkpoint, "classes": names, **scores}))
        print(f"wrote {args.out}")
    return 0
