"""The `deepmim` command."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

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
Unknown keys and wrong types are refused before anything runs.
"""

EPILOG = """\
commands:
  pretrain   MAE / DeepMIM pre-training (checkpoints, metrics.jsonl, TensorBoard, loss.png, reconstruction.png)
  recipes    list the bundled recipes, one line each
  presets    list the model presets usable as model.preset=NAME or create_model(NAME)
  export     write a checkpoint's encoder as safetensors loadable by timm.create_model(..., checkpoint_path=)

Run 'deepmim COMMAND --help' for each command's options.
Multi-GPU / multi-node: torchrun --nproc_per_node=8 -m deepmim pretrain --config RECIPE ...
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepmim", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"deepmim {__version__}")
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

    e = sub.add_parser("export", help="export a checkpoint's encoder for timm",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Write the encoder as safetensors in timm's VisionTransformer layout:\n\n"
                                   "  deepmim export runs/demo/checkpoint-last.pt --out encoder.safetensors\n"
                                   "  timm.create_model('vit_base_patch16_224', num_classes=0,\n"
                                   "                    checkpoint_path='encoder.safetensors')")
    e.add_argument("checkpoint", help="a deepmim checkpoint")
    e.add_argument("--out", required=True, help="output .safetensors path")
    e.add_argument("--img-size", type=int, default=None, help="resample the position embedding to this size")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from ..config.loader import ConfigError
    from ..models.loading import CheckpointError
    from ..training.loop import NonFiniteLossError
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"deepmim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"deepmim {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except ValueError as err:  # DataError and friends: bad input, message says what to fix
        print(f"deepmim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deepmim {args.command}: interrupted; resume with train.resume=auto", file=sys.stderr)
        return 130


def cmd_pretrain(args) -> int:
    from ..config.loader import dump_yaml
    from ..tasks.pretrain import load_pretrain_config, run_pretrain

    cfg = load_pretrain_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    result = run_pretrain(cfg)
    state = "finished" if result.finished else f"stopped at step {result.step} (train.max_steps)"
    print(f"pretrain {state}: {result.step} steps, last loss {result.last_metrics.get('loss', float('nan')):.4f}, "
          f"checkpoint {result.checkpoint}")
    return 0


def cmd_recipes(args) -> int:
    from ..config.loader import list_recipes, recipe_description

    recipes = list_recipes()
    width = max(len(p.stem) for p in recipes)
    for path in recipes:
        print(f"{path.stem:<{width}}  {recipe_description(path)}")
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
    from ..models.export import export_encoder, timm_model_name
    from ..models.loading import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    path = export_encoder(model, args.out, args.img_size)
    name = timm_model_name(model)
    hint = (f"timm.create_model('{name}', num_classes=0, checkpoint_path='{path}')" if name and
            (args.img_size or model.encoder.cfg.img_size) == 224 else
            "a timm VisionTransformer with the same size (num_classes=0)")
    print(f"wrote {path}; load it with {hint}")
    return 0


COMMANDS = {"pretrain": cmd_pretrain, "recipes": cmd_recipes, "presets": cmd_presets, "export": cmd_export}

if __name__ == "__main__":
    sys.exit(main())
