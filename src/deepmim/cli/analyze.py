"""`deepmim analyze CKPT [CKPT ...] --data ... --out DIR`: the paper's claims measured, report.html."""

from __future__ import annotations

import argparse

from .arguments import add_probe_arguments, parse_probe_args

HELP = """\
Measure DeepMIM's claims on checkpoints, side by side (e.g. an MAE run and a DeepMIM run):

  per-layer linear probe + k-NN        (1) shallower layers learn more meaningful features
  probes on every checkpoint-epochNNNN (2) faster convergence (runs saved with train.save_every_epochs=N)
  attention distance of every head     (3) more diverse attention
  linear CKA between blocks (and between the same block of two checkpoints of equal depth),
  reconstructions by every head under one fixed mask, loss curves of every head (metrics.jsonl).

  deepmim analyze runs/mae/checkpoint-last.pt runs/deepmim/checkpoint-last.pt \\
      --data embedded:2000 --out runs/analysis probe.epochs=30

--data is a shorthand for data.*:
  embedded        the embedded shapes (data.name=embedded; data.num_samples images per split)
  embedded:N      the same with data.num_samples=N
  FOLDER          a folder of IDX files (MNIST / Fashion-MNIST: data.name=idx) or an image folder with
                  train/ and val/ (data.name=imagefolder); data.path=FOLDER
  key=value overrides come after it and win (data.img_size, data.mean, ...). Without --data: the data the
  checkpoints were trained on, as their config records it (refused when they record none or differ).

Config (AnalyzeConfig = ProbeConfig + analysis.*): data, features (pool, cache_dir, blocks, device),
probe, knn, num_classes, analysis.measures=[probe,knn,attention,cka,reconstruction,loss,convergence],
analysis.attention_images, analysis.cka_samples, analysis.reconstruction_images, analysis.mask_seed.
Features are cached (features.cache_dir) and shared with knn / probe-layers.

Writes to --out: report.html (self-contained: figures embedded), analysis.json and metrics.csv (every
number), one PNG per figure, probe/ and convergence/ (probe-layers' own layers.json/csv/png)."""


# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 80
SUMMARY = """\
  analyze    the paper's claims on checkpoints side by side: per-layer probes, attention distance, CKA, report.html
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "analyze",
        help="measure the paper's claims on checkpoints; report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=HELP,
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="SHORTHAND",
        help="embedded | embedded:N | FOLDER (IDX files or an image folder); see above",
    )
    add_probe_arguments(p, "checkpoints", "checkpoints to analyse, then key=value overrides", command="analyze")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.analyze import data_overrides, load_analyze_config, run_analyze
    from ..tasks.scored_data import data_line, resolve_scored_data

    data = args.data
    rest = list(args.checkpoints)
    for i, item in enumerate(rest):  # given after the checkpoints: the remainder swallowed it
        if item.startswith("--data="):
            data = item.split("=", 1)[1]
            del rest[i]
            break
        if item == "--data":
            if i + 1 >= len(rest):
                raise ValueError("--data needs a value: embedded, embedded:N or a folder")
            data = rest[i + 1]
            del rest[i : i + 2]
            break
    args.checkpoints = rest
    parse_probe_args(args, "checkpoints")
    shorthand = data_overrides(data)
    cfg = load_analyze_config(args.config, shorthand + args.overrides)
    cfg, source = resolve_scored_data(cfg, args.checkpoints, args.config, args.overrides, "analyze", extra=shorthand)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if not args.checkpoints:
        raise ValueError("analyze needs at least one checkpoint")
    result = run_analyze(args.checkpoints, cfg, args.out, data_source=source)
    out = result["out_dir"]
    print(data_line(result["data"]))
    for name, per_block in result.get("probe", {}).items():
        line = " ".join(f"{b}:{100 * r['top1']:.1f}" for b, r in per_block.items())
        print(f"{name}: linear-probe top-1 (%) per block  {line}")
    for name, per_block in result.get("knn", {}).items():
        print(
            f"{name}: k-NN top-1 (%) per block          "
            + " ".join(f"{b}:{100 * r['top1']:.1f}" for b, r in per_block.items())
        )
    for name, a in result.get("attention", {}).items():
        print(
            f"{name}: attention distance std over heads (px) per block  "
            + " ".join(f"{i + 1}:{v:.2f}" for i, v in enumerate(a["std"]))
        )
    for note in result.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {out}/report.html, analysis.json, metrics.csv and {len(result['figures'])} figures")
    return 0
