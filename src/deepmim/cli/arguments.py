"""Arguments shared by the commands that read checkpoints (knn, probe-layers, linprobe, analyze)."""

from __future__ import annotations

import argparse


def is_rank_zero() -> bool:
    """training.distributed.is_rank_zero, imported when called: the CLI module loads no torch until a
    command needs it (deepmim --help, recipes and presets never do)."""
    from ..training.distributed import is_rank_zero as rank_zero

    return rank_zero()


OUT_HELP = {  # what --out defaults to, per command: the output_dir default of its config (tests compare them)
    "knn": "output folder for knn.json (default: none, the scores are printed only)",
    "probe-layers": "output folder (default: output_dir, runs/probe)",
    "linprobe": "output folder (default: output_dir, runs/linprobe)",
    "analyze": "output folder (default: output_dir, runs/analyze)",
}


def add_probe_arguments(
    parser: argparse.ArgumentParser,
    positional: str,
    help_text: str,
    remainder: bool = True,
    vs_random: bool = False,
    command: str = "probe-layers",
) -> None:
    """Options of knn / probe-layers / linprobe / analyze (`command`: whose --out default the help names).
    The positional takes the rest of the line (checkpoints and key=value overrides, options anywhere),
    re-parsed intermixed by parse_probe_args."""
    if vs_random:
        parser.add_argument(
            "--vs-random",
            action="store_true",
            help="also probe the untrained encoder the first checkpoint's run started from (same "
            "architecture and seed) and print best block against best block",
        )
    parser.add_argument("--out", default=None, help=OUT_HELP[command])
    parser.add_argument(
        "--blocks", default=None, help="comma-separated blocks, e.g. 4,8,12 (default: probe-layers all, knn the last)"
    )
    parser.add_argument("--config", "-c", metavar="RECIPE", help="YAML recipe mapped onto ProbeConfig")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        positional, nargs=argparse.REMAINDER if remainder else "*", metavar="CKPT ... [key=value ...]", help=help_text
    )


def parse_probe_args(args, positional: str):
    """Split the remainder into checkpoints and overrides, honouring options given after them."""
    rest = argparse.ArgumentParser(prog=f"deepmim {args.command}", add_help=False)
    vs_random = hasattr(args, "vs_random")
    add_probe_arguments(rest, "items", "", remainder=False, vs_random=vs_random)
    parsed = rest.parse_intermixed_args(getattr(args, positional))
    if vs_random:
        args.vs_random = args.vs_random or parsed.vs_random
    for name in ("out", "blocks", "config"):
        if getattr(parsed, name) is not None:
            setattr(args, name, getattr(parsed, name))
    args.print_config = args.print_config or parsed.print_config
    args.checkpoints = [a for a in parsed.items if "=" not in a]
    args.overrides = [a for a in parsed.items if "=" in a]
    if args.blocks:
        args.overrides.append(f"features.blocks=[{args.blocks}]")
    return args
