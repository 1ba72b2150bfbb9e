"""`deepmim pretrain --config RECIPE [key=value ...]`: MAE / DeepMIM pre-training."""

from __future__ import annotations

import argparse

from .arguments import is_rank_zero

HELP = """\
Pre-train with a recipe plus key=value overrides.

  deepmim pretrain --config demo train.epochs=5

Outputs in train.output_dir: checkpoint-last.pt (resumable), config.yaml,
metrics.jsonl, tensorboard/, loss.png, reconstruction.png."""


# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 10
SUMMARY = """\
  pretrain   MAE / DeepMIM pre-training (checkpoints, metrics.jsonl, TensorBoard, loss.png, reconstruction.png)
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pretrain",
        help="pre-train a model (MAE or DeepMIM)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=HELP,
    )
    p.add_argument("--config", "-c", metavar="RECIPE", help="bundled recipe name or path to a YAML recipe")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=10")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.pretrain import derived_values, load_pretrain_config, run_pretrain

    cfg = load_pretrain_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        print("".join(f"# derived, one process: {line}\n" for line in derived_values(cfg).lines()), end="")
        return 0
    result = run_pretrain(cfg)
    if is_rank_zero():
        print(training_result_line("pretrain", result))
    return 0


def training_result_line(command: str, result) -> str:
    """The last line of a training command (pretrain, finetune): what was trained, the losses (the mean over
    the last epoch, as the `epoch` rows of metrics.jsonl, and the last logged one), the checkpoint."""
    loss, logged = result.last_metrics.get("loss"), getattr(result, "last_logged", {}) or {}
    loss_text = f", mean loss of the last epoch {loss:.4f}" if loss is not None else ""
    if logged.get("loss") is not None:
        loss_text += f", last logged loss {logged['loss']:.4f} (step {logged['step']})"
    if result.step == result.start_step:
        return (
            f"{command}: nothing trained, the run had already reached step {result.step}{loss_text}; "
            f"checkpoint {result.checkpoint}"
        )
    state = "finished" if result.finished else f"stopped at step {result.step} (train.max_steps)"
    return f"{command} {state}: {result.step} steps{loss_text}, checkpoint {result.checkpoint}"
