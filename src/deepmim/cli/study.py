"""`deepmim study --config RECIPE [key=value ...]`: a declared comparison, end to end, resumable."""

from __future__ import annotations

import argparse
import shlex

HELP = """\
Run a declared comparison end to end: every arm (MAE, DeepMIM, an untrained encoder) with every seed is
pre-trained, probed on every block (linear probe and k-NN, cls and avg pooling), measured (attention
distance, probes along pre-training) and fine-tuned with one recipe, then tabulated with mean +- std over
seeds, wall-clock and FLOPs:

  deepmim study --config study_embedded_cpu                      # the embedded data; not yet run: its 491,520
                                                                 # pre-training images alone take ~13-55 min on 2 CPU cores
  deepmim study --config study_fashion_mnist_cpu                 # Fashion-MNIST (apt-get install dataset-fashion-mnist)
  deepmim study --config study_fashion_mnist_gpu                 # ViT-Tiny-size encoder, 100+ epochs, one GPU
  deepmim study --config my_study.yaml seeds=[0,1,2,3] finetune.overrides.train.epochs=20
  deepmim study --config study_embedded_cpu --print-config       # the resolved config; runs nothing

Re-running the same command continues a killed study: finished stages are skipped, unfinished training
runs resume from their last checkpoint. A stage whose inputs changed stops the study with what changed
(on_change=rerun recomputes such stages instead). Arm kinds: pretrain (any preset/target) | random (the
untrained encoder: frozen features, and fine-tuning from it = supervised training from scratch).

Writes to output_dir: results.json (every number, per seed and aggregated, the machine, the command),
results.md (the tables), probe_per_block.png, convergence.png, attention_distance.png,
accuracy_vs_flops.png, report.html (self-contained), and <arm>/seed<k>/{pretrain|init,finetune,...}/ with
stages/<stage>.json (each stage's record and result)."""


# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 100
SUMMARY = """\
  study      a declared comparison (MAE / DeepMIM / untrained encoder) over seeds, end to end and resumable:
             probes per block, fine-tuning, attention, convergence, wall-clock, FLOPs -> results.md, report.html

"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "study",
        help="a declared comparison of arms over seeds: results.md, report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=HELP,
    )
    p.add_argument("--config", "-c", metavar="RECIPE", help="bundled study recipe name or YAML path (task: study)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. seeds=[0,1]")
    p.set_defaults(handler=run)
    return p


def run(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.study import load_study_config, run_study
    from ..tasks.study.tables import headline, markdown_table

    cfg = load_study_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    command = " ".join(
        ["deepmim", "study"]
        + (["--config", args.config] if args.config else [])
        + [shlex.quote(o) for o in args.overrides]
    )
    results = run_study(cfg, command=command)
    print(markdown_table(headline(results)), end="")
    print(f"wrote {results['out_dir']}/results.md, results.json, report.html")
    return 0
