"""`deepmim recipes` and `deepmim presets`: what the package ships, one line each. Both read YAML and
dataclasses only, so they answer without loading torch or timm (tests/test_lazy_imports.py)."""

from __future__ import annotations

# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 20
SUMMARY = """\
  recipes    list the bundled recipes, one line each
  presets    list the model presets usable as model.preset=NAME or create_model(NAME)
"""


def add_parser(subparsers) -> None:
    subparsers.add_parser("recipes", help="list the bundled recipes").set_defaults(handler=recipes)
    subparsers.add_parser("presets", help="list the model presets").set_defaults(handler=presets)


def recipes(args) -> int:
    from ..config.loader import list_recipes, recipe_description, recipe_task

    paths = list_recipes()
    width = max(len(p.stem) for p in paths)
    for path in paths:
        print(f"{path.stem:<{width}}  [{recipe_task(path)}] {recipe_description(path)}")
    return 0


def presets(args) -> int:
    from ..models.presets import list_presets, preset_config

    for name in list_presets():
        cfg = preset_config(name)
        e = cfg.encoder
        heads = ", ".join(f"{h.block}:{h.decoder_depth}x{h.decoder_dim}" for h in cfg.heads)
        print(
            f"{name:<32} ViT {e.embed_dim}w x {e.depth} blocks, {e.img_size}px/p{e.patch_size}; "
            f"decoders (block:depth x width) {heads}"
        )
    return 0
