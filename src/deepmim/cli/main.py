"""The `deepmim` command."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import analyze as analyze_cli
from . import data as data_cli
from . import segment as segment_cli
from . import study as study_cli
from . import submit as submit_cli
from .arguments import add_probe_arguments, is_rank_zero, parse_probe_args

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

EPILOG = """\
commands:
  pretrain   MAE / DeepMIM pre-training (checkpoints, metrics.jsonl, TensorBoard, loss.png, reconstruction.png)
  recipes    list the bundled recipes, one line each
  presets    list the model presets usable as model.preset=NAME or create_model(NAME)
  export     a checkpoint's weights as safetensors: the encoder for timm.create_model(..., checkpoint_path=),
             or the fine-tuned classifier / segmentation model as it is; --format hf: a transformers folder
  data       WebDataset shards: pack an ImageFolder, index shards anywhere, time the data pipeline
  knn        weighted k-NN accuracy on frozen (cached) features
  probe-layers  a linear probe per encoder block, several checkpoints side by side (table + layers.png)
  linprobe   MAE's linear probe on the last block (frozen encoder, BN + linear head, LARS)
  finetune   the MAE/BEiT fine-tuning recipe (layer decay, RandAugment, Mixup/CutMix, EMA), eval every epoch
  evaluate   top-1/top-5/loss of a fine-tuned checkpoint
  segment    semantic segmentation: UperNet on a pre-trained ViT (train, eval: mIoU), the ADE20K protocol
  analyze    the paper's claims on checkpoints side by side: per-layer probes, attention distance, CKA, report.html
  submit     a training command as a SLURM job (submitit): nodes, GPUs, partition, time; requeued on timeout
  study      a declared comparison (MAE / DeepMIM / untrained encoder) over seeds, end to end and resumable:
             probes per block, fine-tuning, attention, convergence, wall-clock, FLOPs -> results.md, report.html

Run 'deepmim COMMAND --help' for each command's options.
Multi-GPU / multi-node (every training command; train.batch_size is per process):
  torchrun --standalone --nproc_per_node=8 -m deepmim pretrain --config RECIPE ...
  torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 --max-restarts=3 \\
      -m deepmim pretrain --config RECIPE train.strategy=fsdp train.activation_checkpointing=true
  (restarted workers resume from the newest checkpoint; see the README for SLURM)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepmim", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"deepmim {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the console "
                                                                      "(the messages of the deepmim logger; results still print)")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pre-train a model (MAE or DeepMIM)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Pre-train with a recipe plus key=value overrides.\n\n"
                                   "  deepmim pretrain --config demo train.epochs=5\n\n"
                                   "Outputs in train.output_dir: checkpoint-last.pt (resumable), config.yaml,\n"
                                   "metrics.jsonl, tensorboard/, loss.png, reconstruction.png.")
    p.add_argument("--config", "-c", metavar="RECIPE", help="bundled recipe name or path to a YAML recipe")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=10")

    sub.add_parser("recipes", help="list the bundled recipes")
    sub.add_parser("presets", help="list the model presets")

    e = sub.add_parser("export", help="export a checkpoint's weights as safetensors (encoder for timm, "
                                      "classifier, segmentation model)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Write a checkpoint's weights as safetensors. A pre-training checkpoint gives\n"
                                   "its encoder in timm's VisionTransformer layout:\n\n"
                                   "  deepmim export runs/demo/checkpoint-last.pt --out encoder.safetensors\n"
                                   "  deepmim export runs/demo/checkpoint-last.pt --format timm --out runs/demo/timm\n"
                                   "  timm.create_model('local-dir:runs/demo/timm', pretrained=True)\n\n"
                                   "Every export carries the preprocessing the weights were trained with (mean/std,\n"
                                   "input size, crop, interpolation) and prints the exact call that loads it.\n\n"
                                   "A fine-tuning checkpoint gives the timm classifier as it is, a segmentation\n"
                                   "checkpoint the UperNet model as it is; both keep their config in the file's\n"
                                   "metadata, so 'deepmim evaluate' / 'deepmim segment eval' read them back.\n\n"
                                   "  deepmim export mae_pretrain_vit_base.pth --preset mae_vit_base --out enc.safetensors\n"
                                   "  deepmim export runs/mae/checkpoint-last.pt --format hf --out runs/mae/hf\n"
                                   "  transformers.ViTMAEForPreTraining.from_pretrained('runs/mae/hf')")
    e.add_argument("checkpoint", help="a checkpoint of deepmim pretrain, finetune or segment train, or bare weights "
                                      "(MAE's, the authors', timm's, a Hugging Face ViTMAE folder)")
    e.add_argument("--out", required=True, help="output .safetensors path (a folder for --format timm / hf / "
                                                "hf-encoder)")
    e.add_argument("--img-size", type=int, default=None, help="resample the position embedding to this size")
    e.add_argument("--preset", default=None, help="the architecture of weights without a deepmim config, e.g. "
                                                  "mae_vit_base (deepmim presets lists them)")
    e.add_argument("--format", default="safetensors", choices=("safetensors", "timm", "hf", "hf-encoder"),
                   help="safetensors (timm layout, default) | timm: a folder for timm.create_model('local-dir:OUT', "
                        "pretrained=True) | hf: a transformers folder (ViTMAEForPreTraining for MAE-layout models, "
                        "ViTForImageClassification for cls-token classifiers) | hf-encoder: a transformers ViTModel "
                        "folder")

    k = sub.add_parser("knn", help="weighted k-NN accuracy on frozen features",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="DINO's weighted k-NN (cosine similarity, votes weighted by exp(sim/T)) on\n"
                                   "frozen train -> val features (cached in features.cache_dir), on the data the\n"
                                   "checkpoint was trained on unless data.* says otherwise:\n\n"
                                   "  deepmim knn runs/demo/checkpoint-last.pt data.num_samples=2000 knn.k=20\n"
                                   "  deepmim knn CKPT features.blocks=[4,8,12] features.pool=avg knn.temperature=0.1\n\n"
                                   "Config sections: data, features, knn, num_classes (see ProbeConfig).")
    add_probe_arguments(k, "checkpoint", "a deepmim checkpoint (or other weights with features.preset=NAME)",
                        command="knn")

    pl = sub.add_parser("probe-layers", help="a linear probe on every block's features, several checkpoints",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="MAE's linear probe (BatchNorm1d(affine=False) + Linear, LARS, warm-up + cosine)\n"
                                    "on cached frozen features of every block (one encoder pass per split):\n\n"
                                    "  deepmim probe-layers runs/mae/checkpoint-last.pt runs/deepmim/checkpoint-last.pt \\\n"
                                    "      --out runs/layers data.num_samples=2000 probe.epochs=20\n"
                                    "  deepmim probe-layers runs/demo/checkpoint-last.pt --vs-random --out runs/demo/probe\n\n"
                                    "Features are pooled with features.pool (default avg: the mean patch token, which\n"
                                    "reads pre-trained MIM encoders better than the cls token; cls is one override away).\n"
                                    "--vs-random adds the untrained encoder the run started from and prints best block\n"
                                    "against best block. Writes layers.json, layers.csv and layers.png.")
    add_probe_arguments(pl, "checkpoints", "checkpoints to compare, then key=value overrides", vs_random=True)

    lp = sub.add_parser("linprobe", help="MAE's linear probe on the last block (frozen encoder, LARS)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="MAE's linear-probing protocol: frozen encoder, last block's cls token after\n"
                                    "the final norm (features.pool=avg: mean patch token), BatchNorm1d(affine=False)\n"
                                    "+ Linear, LARS, warm-up + cosine (probe.*). augment=true (default): end to end\n"
                                    "with RandomResizedCrop + flip every epoch; augment=false: cached features.\n\n"
                                    "  deepmim linprobe runs/demo/checkpoint-last.pt --out runs/linprobe \\\n"
                                    "      data.num_samples=2000 probe.epochs=10 probe.warmup_epochs=1\n\n"
                                    "Writes linprobe.json and probe-head.pt. Config: LinprobeConfig.")
    add_probe_arguments(lp, "checkpoint", "a checkpoint, then key=value overrides", command="linprobe")

    f = sub.add_parser("finetune", help="fine-tune a pre-trained encoder for classification",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="The authors' ImageNet recipe (finetune_vit_base_in1k) or your own:\n\n"
                                   "  deepmim finetune --config finetune_demo model.checkpoint=runs/demo/checkpoint-last.pt\n"
                                   "  deepmim finetune --config finetune_vit_base_in1k model.checkpoint=deepmim_clip.pth "
                                   "data.path=/data/imagenet\n\n"
                                   "model.checkpoint takes our checkpoints, the authors', MAE's or timm weights "
                                   "(with model.preset naming the architecture when the file has no deepmim config).")
    f.add_argument("--config", "-c", metavar="RECIPE", help="bundled finetune recipe or YAML path")
    f.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    f.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=10")

    v = sub.add_parser("evaluate", help="evaluate a fine-tuned checkpoint")
    v.add_argument("checkpoint", help="a checkpoint written by deepmim finetune")
    v.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.path=/data/imagenet val_split=val")
    v.add_argument("--out", metavar="FILE", default=None, help="write the scores and the data scored as JSON")
    segment_cli.add_parser(sub)
    analyze_cli.add_parser(sub)
    study_cli.add_parser(sub)
    data_cli.add_parser(sub)
    submit_cli.add_parser(sub)
    return parser


LIGHT_COMMANDS = ("recipes", "presets")  # they read YAML and dataclasses only (tests/test_lazy_imports.py)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(move_verbosity_first(sys.argv[1:] if argv is None else list(argv)))
    configure_logging(args.quiet, args.verbose)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in LIGHT_COMMANDS:  # answered without loading torch or timm: none of the errors below arise
        try:
            return COMMANDS[args.command](args)
        except BrokenPipeError:  # e.g. `deepmim presets | head`
            sys.stderr.close()
            return 0
    from ..config.loader import ConfigError
    from ..checkpoint import CheckpointError
    from ..training.guard import DivergenceError
    from ..training.signals import Stopped
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # e.g. `deepmim presets | head`
        sys.stderr.close()
        return 0
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        text = os_error_message(err) if isinstance(err, OSError) and err.errno is not None else error_text(err)
        print(f"deepmim {args.command}: error: {text}", file=sys.stderr)
        return 2
    except Stopped as err:  # a stop signal: the step finished and a resumable checkpoint was written
        if is_rank_zero():
            text = str(err)
            if args.command == "study":  # a study resumes its runs by itself
                text = text.replace("continue with the same command and train.resume=auto",
                                    "run the same command again to continue")
            print(f"deepmim {args.command}: {text}", file=sys.stderr)
        return err.exit_code
    except DivergenceError as err:
        print(f"deepmim {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except ValueError as err:  # DataError and friends: bad input, message says what to fix
        print(f"deepmim {args.command}: error: {error_text(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder that cannot be read or written (permissions, a file for a folder)
        print(f"deepmim {args.command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not is_collective_timeout(err):
            raise
        print(f"deepmim {args.command}: error: {collective_timeout_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "run the same command again to continue" if args.command == "study" else "resume with train.resume=auto"
        print(f"deepmim {args.command}: interrupted; {how}", file=sys.stderr)
        return 130


def is_collective_timeout(err: BaseException) -> bool:
    """A torch.distributed collective that waited past its timeout (gloo's and NCCL's words for it)."""
    text = str(err).lower()
    return "timed out" in text or ("timeout" in text and "collective" in text)


def collective_timeout_message(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"this process waited longer than train.dist_timeout for the other processes of the job ({first[:200]}): "
            f"one of them is frozen, hung or much slower than the rest. Its last checkpoint is intact: resume with "
            f"train.resume=auto once every process runs (raise train.dist_timeout if a healthy step or checkpoint "
            f"write takes that long)")


def error_text(err: BaseException) -> str:
    """The message of `err`; for one a DataLoader worker raised, the worker's own one-line message without
    the traceback torch wraps it in when it re-raises it in the main process."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


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


def os_error_message(err: OSError) -> str:
    """One paragraph for an OSError: what failed, on which path, what to do."""
    import errno
    from pathlib import Path

    where = f" '{err.filename}'" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return (f"no space left on the disk while writing{where or ' a file'}: free space on it (or choose a folder "
                f"on another disk), then run the command again; a training run continues from its last checkpoint "
                f"with train.resume=auto (a checkpoint is replaced only once its successor is written in full)")
    if err.errno == errno.ENOENT and err.filename and not Path(err.filename).parent.exists():
        return (f"cannot use{where}: its folder '{Path(err.filename).parent}' no longer exists (deleted or moved "
                f"while the command ran?); restore the folder, or choose another one, and run the command again")
    return (f"cannot use{where}: {err.strerror or err} ({type(err).__name__}); check that the path exists, is "
            f"of the right kind (a file or a folder) and that you may read or write it, or choose another path")


def run_summary(command: str, result) -> str:
    """The last line of a training command: what was trained, the losses (the mean over the last epoch, as the
    `epoch` rows of metrics.jsonl, and the last logged one), the checkpoint."""
    loss, logged = result.last_metrics.get("loss"), getattr(result, "last_logged", {}) or {}
    loss_text = f", mean loss of the last epoch {loss:.4f}" if loss is not None else ""
    if logged.get("loss") is not None:
        loss_text += f", last logged loss {logged['loss']:.4f} (step {logged['step']})"
    if result.step == result.start_step:
        return (f"{command}: nothing trained, the run had already reached step {result.step}{loss_text}; "
                f"checkpoint {result.checkpoint}")
    state = "finished" if result.finished else f"stopped at step {result.step} (train.max_steps)"
    return f"{command} {state}: {result.step} steps{loss_text}, checkpoint {result.checkpoint}"


def cmd_pretrain(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.pretrain import derived_values, load_pretrain_config, run_pretrain

    cfg = load_pretrain_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        print("".join(f"# derived, one process: {line}\n" for line in derived_values(cfg).lines()), end="")
        return 0
    result = run_pretrain(cfg)
    if is_rank_zero():
        print(run_summary("pretrain", result))
    return 0


def cmd_recipes(args) -> int:
    from ..config.loader import list_recipes, recipe_description, recipe_task

    recipes = list_recipes()
    width = max(len(p.stem) for p in recipes)
    for path in recipes:
        print(f"{path.stem:<{width}}  [{recipe_task(path)}] {recipe_description(path)}")
    return 0


def cmd_presets(args) -> int:
    from ..models.presets import list_presets, preset_config

    for name in list_presets():
        cfg = preset_config(name)
        e = cfg.encoder
        heads = ", ".join(f"{h.block}:{h.decoder_depth}x{h.decoder_dim}" for h in cfg.heads)
        print(f"{name:<32} ViT {e.embed_dim}w x {e.depth} blocks, {e.img_size}px/p{e.patch_size}; "
              f"decoders (block:depth x width) {heads}")
    return 0


def cmd_export(args) -> int:
    from ..tasks.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, args.img_size, args.preset, args.format))
    return 0


def cmd_knn(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.probe import load_probe_config, run_knn

    from ..tasks.scored_data import data_line, resolve_scored_data

    parse_probe_args(args, "checkpoint")
    cfg = load_probe_config(args.config, args.overrides)
    source = "given"
    if args.checkpoints:
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
        print(f"knn (k={cfg.knn.k}, T={cfg.knn.temperature}, {cfg.features.pool}) block {block}: "
              f"top-1 {100 * r['top1']:.2f}%{top5}")
    if args.out:
        from pathlib import Path

        from ..training.jsonfile import dumps
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "knn.json").write_text(dumps(
            {"checkpoint": args.checkpoints[0], "data": scored, "k": cfg.knn.k, "temperature": cfg.knn.temperature,
             "pool": cfg.features.pool, "results": {str(b): r for b, r in results.items()}}))
        print(f"wrote {args.out}/knn.json")
    return 0


def cmd_probe_layers(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.probe import format_table, load_probe_config, run_probe_layers

    from ..tasks.scored_data import data_line, resolve_scored_data

    parse_probe_args(args, "checkpoints")
    cfg = load_probe_config(args.config, args.overrides)
    source = "given"
    if args.checkpoints:
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


def cmd_linprobe(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.linprobe import load_linprobe_config, run_linprobe
    from ..tasks.scored_data import data_line, resolve_scored_data

    parse_probe_args(args, "checkpoint")
    if args.blocks:
        raise ValueError("linprobe reads the last block only; use probe-layers for --blocks")
    cfg = load_linprobe_config(args.config, args.overrides)
    source = "given"
    if args.checkpoints:
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
    print(f"linprobe ({mode}, {cfg.features.pool}): top-1 {100 * r['top1']:.2f}%{top5}, "
          f"val loss {r['val_loss']:.4f} in {r['seconds']:.1f}s; wrote {args.out or cfg.output_dir}/linprobe.json")
    return 0


def cmd_finetune(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.finetune import load_finetune_config, run_finetune

    cfg = load_finetune_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    result = run_finetune(cfg)
    if is_rank_zero():
        print(run_summary("finetune", result))
    return 0


def cmd_evaluate(args) -> int:
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


COMMANDS = {"finetune": cmd_finetune, "evaluate": cmd_evaluate, "pretrain": cmd_pretrain, "recipes": cmd_recipes, "presets": cmd_presets, "export": cmd_export,
            "analyze": analyze_cli.run, "segment": segment_cli.run, "study": study_cli.run, "data": data_cli.run, "submit": submit_cli.run,
            "knn": cmd_knn, "probe-layers": cmd_probe_layers, "linprobe": cmd_linprobe}

if __name__ == "__main__":
    sys.exit(main())
