"""The `deepmim` command: the top-level parser, whose commands the command modules of this package add, and the
console's verbosity; errors.py turns what a command raises into a message and an exit code."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType
from typing import List, Optional

from .errors import run_command

DESCRIPTION = """\
deepmim: pre-train Vision Transformers with masked image modeling under deep supervision
(DeepMIM, WACV 2025) and carry the result downstream.

Every job is configured by a recipe (a YAML file, or the name of a bundled one) plus
dotted key=value overrides, e.g.

  deepmim pretrain --config demo                                # 32px DeepMIM on the embedded data
  deepmim pretrain --config deepmim_pixel_vit_base data.name=imagefolder data.path=/data/imagenet
  deepmim pretrain --config demo train.epochs=2 model.heads.0.weight=0.5 train.output_dir=runs/x
  deepmim pretrain --config demo train.resume=auto              # continue the newest checkpoint
  deepmim pretrain --config demo --print-config                 # show the resolved config, run nothing

Config sections: model (preset, encoder, heads, target, mask_ratio), data, optim, train.
Unknown keys, wrong types and values a run would refuse are refused before anything runs.
A train.output_dir belongs to one run: a fresh run refuses a folder that holds a run's files
(continue with train.resume=auto, or start afresh with train.overwrite=true, which moves the
old files aside), and a second run on a folder in use stops with the first one's pid.
"""

EPILOG_TAIL = """\
Run 'deepmim COMMAND --help' for each command's options.
Multi-GPU / multi-node (every training command; train.batch_size is per process):
  torchrun --standalone --nproc_per_node=8 -m deepmim pretrain --config RECIPE ...
  torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 --max-restarts=3 \\
      -m deepmim pretrain --config RECIPE train.strategy=fsdp train.activation_checkpointing=true
  (restarted workers resume from the newest checkpoint; see the README for SLURM)
"""


def command_modules() -> List[ModuleType]:
    """Every module of this package that adds a command (it has `add_parser(subparsers)`, each parser naming
    its handler with `set_defaults(handler=...)`), in their `ORDER`: a new command is a new module here."""
    package = importlib.import_module(__package__)
    modules = [importlib.import_module(f"{__package__}.{info.name}") for info in pkgutil.iter_modules(package.__path__)]
    return sorted((m for m in modules if hasattr(m, "add_parser")), key=lambda m: m.ORDER)


def epilog(modules: List[ModuleType]) -> str:
    return "commands:\n" + "".join(m.SUMMARY for m in modules) + "\n" + EPILOG_TAIL


def build_parser() -> argparse.ArgumentParser:
    modules = command_modules()
    parser = argparse.ArgumentParser(
        prog="deepmim",
        description=DESCRIPTION,
        epilog=epilog(modules),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"deepmim {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors on the console (the messages of the deepmim logger; results still print)",
    )
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in modules:
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(move_verbosity_first(sys.argv[1:] if argv is None else list(argv)))
    configure_logging(args.quiet, args.verbose)
    if args.command is None:
        parser.print_help()
        return 0
    return run_command(args)


VERBOSITY_FLAGS = ("--quiet", "--verbose")


def move_verbosity_first(argv: List[str]) -> List[str]:
    """`deepmim pretrain ... --quiet` as `deepmim --quiet pretrain ...`: the long flags are accepted anywhere
    before a `--`."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in VERBOSITY_FLAGS]
    return flags + [a for a in argv[:end] if a not in VERBOSITY_FLAGS] + argv[end:]


def configure_logging(quiet: bool, verbose: bool) -> None:
    """The console handler of the `deepmim` logger at the level asked for; Python warnings (deepmim's among
    them) go through logging too, so --quiet keeps them and they share the console's format."""
    import logging

    from ..training.console import configure_console

    configure_console(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    if not warnings_logger.handlers:
        warnings_logger.addHandler(logging.getLogger("deepmim").handlers[0])
        warnings_logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
