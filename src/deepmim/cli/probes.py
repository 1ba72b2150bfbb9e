"""`deepmim knn|probe-layers|linprobe CKPT ... [key=value ...]`: frozen-encoder probes of checkpoints."""

from __future__ import annotations

import argparse

from .arguments import add_probe_arguments, is_rank_zero, parse_probe_args

KNN_HELP = """\
DINO's weighted k-NN (cosine similarity, votes weighted by exp(sim/T)) on
frozen train -> val features (cached in features.cache_dir), on the data the
checkpoint was trained on unless data.* says otherwise:

  deepmim knn runs/demo/checkpoint-last.pt data.num_samples=2000 knn.k=20
  deepmim knn CKPT features.blocks=[4,8,12] features.pool=avg knn.temperature=0.1

Config sections: data, features, knn, num_classes (see ProbeConfig)."""

PROBE_LAYERS_HELP = """\
MAE's linear probe (BatchNorm1d(affine=False) + Linear, LARS, warm-up + cosine)
on cached frozen features of every block (one encoder pass per split):

  deepmim probe-layers runs/mae/checkpoint-last.pt runs/deepmim/checkpoint-last.pt \\
      --out runs/layers data.num_samples=2000 probe.epochs=20
  deepmim probe-layers runs/demo/checkpoint-last.pt --vs-random --out runs/demo/probe

Features are pooled with features.pool (default avg: the mean patch token, which
reads pre-trained MIM encoders better than the cls token; cls is one override away).
--vs-random adds the untrained encoder the run started from and prints best block
against best block. Writes layers.json, layers.csv and layers.png."""

LINPROBE_HELP = """\
MAE's linear-probing protocol: frozen encoder, last block's cls token after
the final norm (features.pool=avg: mean patch token), BatchNorm1d(affine=False)
+ Linear, LARS, warm-up + cosine (probe.*). augment=true (default): end to end
with RandomResizedCrop + flip every epoch; augment=false: cached features.

  deepmim linprobe runs/demo/checkpoint-last.pt --out runs/linprobe \\
      data.num_samples=2000 probe.epochs=10 probe.warmup_epochs=1

Writes linprobe.json and probe-head.pt. Config: LinprobeConfig."""


# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 50
SUMMARY = """\
  knn        weighted k-NN accuracy on frozen (cached) features
  probe-layers  a linear probe per encoder block, several checkpoints side by side (table + layers.png)
  linprobe   MAE's linear probe on the last block (frozen encoder, BN + linear head, LARS)
"""


def add_parser(subparsers) -> None:
    k = subparsers.add_parser(
        "knn",
        help="weighted k-NN accuracy on frozen features",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=KNN_HELP,
    )
    add_probe_arguments(
        k, "checkpoint", "a deepmim checkpoint (or other weights with features.preset=NAME)", command="knn"
    )
    k.set_defaults(handler=knn)
    pl = subparsers.add_parser(
        "probe-layers",
        help="a linear probe on every block's features, several checkpoints",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=PROBE_LAYERS_HELP,
    )
    add_probe_arguments(pl, "checkpoints", "checkpoints to compare, then key=value overrides", vs_random=True)
    pl.set_defaults(handler=probe_layers)
    lp = subparsers.add_parser(
        "linprobe",
        help="MAE's linear probe on the last block (frozen encoder, LARS)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=LINPROBE_HELP,
    )
    add_probe_arguments(lp, "checkpoint", "a checkpoint, then key=value overrides", command="linprobe")
    lp.set_defaults(handler=linprobe)


def knn(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.probe import load_probe_config, run_knn
    from ..tasks.scored_data import data_line, resolve_scored_data

    parse_probe_args(args, "checkpoint")
    cfg = load_probe_config(args.config, args.overrides)
    cfg, source = resolve_scored_data(cfg, args.checkpoints, args.config, args.overrides, "knn")
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if len(args.checkpoints) != 1:
        raise ValueError(f"deepmim knn takes exactly one checkpoint, got {args.checkpoints or 'none'}")
    scored: dict = {}
    results = run_knn(args.checkpoints[0], cfg, source, scored)
    print(data_line(scored))
    for block, r in results.items():
        top5 = f", top-5 {100 * r['top5']:.2f}%" if "top5" in r else ""
        print(
            f"knn (k={cfg.knn.k}, T={cfg.knn.temperature}, {cfg.features.pool}) block {block}: "
            f"top-1 {100 * r['top1']:.2f}%{top5}"
        )
    if args.out:
        from pathlib import Path

        from ..training.jsonfile import dumps

        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "knn.json").write_text(
            dumps(
                {
                    "checkpoint": args.checkpoints[0],
                    "data": scored,
                    "k": cfg.knn.k,
                    "temperature": cfg.knn.temperature,
                    "pool": cfg.features.pool,
                    "results": {str(b): r for b, r in results.items()},
                }
            )
        )
        print(f"wrote {args.out}/knn.json")
    return 0


def probe_layers(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.probe import format_table, load_probe_config, run_probe_layers
    from ..tasks.scored_data import data_line, resolve_scored_data

    parse_probe_args(args, "checkpoints")
    cfg = load_probe_config(args.config, args.overrides)
    cfg, source = resolve_scored_data(cfg, args.checkpoints, args.config, args.overrides, "probe-layers")
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if not args.checkpoints:
        raise ValueError("probe-layers needs at least one checkpoint")
    out = run_probe_layers(args.checkpoints, cfg, args.out, vs_random=args.vs_random, data_source=source)
    print(data_line(out["data"]))
    print(f"linear-probe top-1 (%) per block ({cfg.features.pool} pooling):")
    print(format_table(out["results"], out["names"]))
    if args.vs_random:
        print(out["comparison"])
    print(f"wrote {out['out_dir']}/layers.json, layers.csv, layers.png")
    return 0


def linprobe(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.linprobe import load_linprobe_config, run_linprobe
    from ..tasks.scored_data import data_line, resolve_scored_data

    parse_probe_args(args, "checkpoint")
    if args.blocks:
        raise ValueError("linprobe reads the last block only; use probe-layers for --blocks")
    cfg = load_linprobe_config(args.config, args.overrides)
    cfg, source = resolve_scored_data(cfg, args.checkpoints, args.config, args.overrides, "linprobe")
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if len(args.checkpoints) != 1:
        raise ValueError(f"deepmim linprobe takes exactly one checkpoint, got {args.checkpoints or 'none'}")
    r = run_linprobe(args.checkpoints[0], cfg, args.out, data_source=source)
    if not is_rank_zero():
        return 0
    print(data_line(r["data"]))
    top5 = f", top-5 {100 * r['top5']:.2f}%" if "top5" in r else ""
    mode = "augmented, end to end" if cfg.augment else "cached features"
    print(
        f"linprobe ({mode}, {cfg.features.pool}): top-1 {100 * r['top1']:.2f}%{top5}, "
        f"val loss {r['val_loss']:.4f} in {r['seconds']:.1f}s; wrote {args.out or cfg.output_dir}/linprobe.json"
    )
    return 0
