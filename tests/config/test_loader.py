"""Recipes, overrides and config values: unknown keys and wrong types named, lists indexed, bundled
recipes resolved, values refused in one paragraph (--print-config refuses what the run refuses), a YAML
alias bomb refused at once, recipe descriptions quoting numbers of their own size only."""

import re
import time

import pytest

from deepmim.cli.main import main
from deepmim.config.loader import (
    MAX_YAML_VALUES,
    ConfigError,
    deep_merge,
    from_dict,
    list_recipes,
    parse_overrides,
    read_yaml,
    recipe_task,
    resolve_recipe_path,
)
from deepmim.config.schema import PretrainConfig, TrainConfig
from deepmim.models.deepmim import validate_model_config
from deepmim.tasks.pretrain import load_pretrain_config
from tests.helpers.cli import cli_error


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epohcs'. Did you mean 'epochs'"):
        load_pretrain_config("demo", ["train.epohcs=3"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=three", r"train.epochs: expected int"),
        ("train.epochs=2.5", r"train.epochs: expected int"),
        ("optim.base_lr=fast", r"optim.base_lr: expected float"),
        ("train.progress=maybe", r"train.progress: expected bool"),
        ("model.heads.0.weight=[1]", r"model.heads.0.weight: expected float"),
        ("data=5", r"data: expected a mapping"),
        ("epochs", r"not of the form key=value"),
    ],
)
def test_wrong_types_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config("demo", [override])


def test_overrides_nest_index_lists_and_parse_yaml_values():
    cfg = load_pretrain_config(
        "demo",
        [
            "train.epochs=3",
            "model.heads.1.weight=0.5",
            "optim.base_lr=1e-3",
            "train.resume=auto",
            "model.target.norm_pix=false",
        ],
    )
    assert cfg.train.epochs == 3
    assert [h.weight for h in cfg.model.heads] == [1.0, 0.5, 1.0, 1.0]
    assert cfg.optim.base_lr == pytest.approx(1e-3)
    assert cfg.train.resume == "auto"
    assert cfg.model.target == {"name": "pixel", "norm_pix": False}
    assert cfg.model.encoder.embed_dim == 128  # from the preset


def test_list_index_out_of_range():
    with pytest.raises(ConfigError, match="out of range"):
        load_pretrain_config("demo", ["model.heads.7.weight=2"])


def test_parse_overrides_and_merge():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_int_accepts_integral_float_and_float_accepts_yaml_exponent_strings():
    assert from_dict(TrainConfig, {"epochs": 4.0}).epochs == 4
    assert from_dict(PretrainConfig, {"optim": {"base_lr": "1e-4"}}).optim.base_lr == pytest.approx(1e-4)


def test_unknown_recipe_suggests_bundled():
    with pytest.raises(ConfigError, match="Did you mean: demo"):
        resolve_recipe_path("dem")


@pytest.mark.parametrize("recipe", [p.stem for p in list_recipes() if recipe_task(p) == "pretrain"])
def test_every_bundled_pretrain_recipe_resolves_and_validates(recipe):
    cfg = load_pretrain_config(recipe)
    validate_model_config(cfg.model)
    assert cfg.data.img_size == cfg.model.encoder.img_size
    assert cfg.model.preset is not None


def test_recipe_file_path_works(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  preset: mae_vit_micro_p4_32\ntrain:\n  epochs: 2\n")
    cfg = load_pretrain_config(str(path), ["train.batch_size=8"])
    assert cfg.train.epochs == 2 and cfg.train.batch_size == 8 and len(cfg.model.heads) == 1


def test_a_different_target_replaces_the_presets_options():
    cfg = load_pretrain_config("demo", ["model.target={name: hog, cell_size: 4}"])
    assert cfg.model.target["name"] == "hog" and "norm_pix" not in cfg.model.target
    # hog undoes the input normalisation: it receives data.mean/std
    assert cfg.model.target["mean"] == cfg.data.mean


def test_target_normalisation_follows_data_unless_set():
    cfg = load_pretrain_config(
        "demo",
        [
            "data.mean=[0.5, 0.5, 0.5]",
            "data.std=[0.25, 0.25, 0.25]",
            "model.target={name: hog, cell_size: 4}",
            "model.heads.0.target={name: hog, cell_size: 4, mean: [0, 0, 0]}",
        ],
    )
    assert cfg.model.target["mean"] == [0.5, 0.5, 0.5] and cfg.model.target["std"] == [0.25, 0.25, 0.25]
    assert cfg.model.heads[0].target["mean"] == [0, 0, 0]
    assert cfg.model.heads[0].target["std"] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("recipe", [p.stem for p in list_recipes() if recipe_task(p) == "finetune"])
def test_every_bundled_finetune_recipe_resolves(recipe):
    from deepmim.tasks.finetune import load_finetune_config

    cfg = load_finetune_config(recipe)
    assert cfg.optim.layer_decay > 0 and cfg.train.epochs > 0


def test_a_recipe_for_another_command_is_refused_with_the_right_command():
    with pytest.raises(ConfigError, match="run: deepmim finetune --config finetune_demo"):
        load_pretrain_config("finetune_demo")


REFUSED = [
    ("model.encoder.patch_size=0", "model.encoder.patch_size must be at least 1, got 0"),
    ("model.heads.0.decoder_dim=0", "model.heads.0.decoder_dim must be at least 1, got 0"),
    ("model.encoder.mlp_ratio=-1", "model.encoder.mlp_ratio must be a positive number, got -1.0"),
    ("model.preset=[1]", "model.preset must be a preset name"),
    ("model.encoder.embed_dim=10000000", "parameters, more than 1e+11"),
    ("data.mean=[.nan,0,0]", "data.mean.0: expected a finite number, got nan"),
    ("model.encoder.norm_eps=nan", "model.encoder.norm_eps: expected a finite number, got 'nan'"),
    ("model.heads.0.weight=.inf", "model.heads.0.weight: expected a finite number, got inf"),
    ("model.heads.0.weight=-1", "model.heads.0.weight must be 0 or more"),
    ("model.heads=[{block: 4, decoder_dim: 64, decoder_heads: 2, weight: 0}]", "every model.heads.N.weight is 0"),
    ("train.seed=99999999999999999999999", "train.seed: 99999999999999999999999 is out of range"),
    ("train.seed=-1", "train.seed must be a whole number in [0, 2**63)"),
    ("model.target={name: pixel, junk: 1}", "unknown config key 'model.target.junk'"),
    ("train.output_dir=", "train.output_dir is empty"),
    ("train.dist_timeout=0", "train.dist_timeout must be a positive number of seconds"),
    ("data.shuffle_buffer=0", "data.shuffle_buffer must be at least 1, got 0"),
    ("train.progress_seconds=-1", "train.progress_seconds must be 0 or more"),
    ("train.online_probe_lr=-1", "train.online_probe_lr must be a positive learning rate"),
]


@pytest.mark.parametrize("override,message", REFUSED, ids=[o for o, _ in REFUSED])
def test_the_run_and_print_config_refuse_the_same_values(override, message, tmp_path, capsys):
    for extra in (["--print-config"], [f"train.output_dir={tmp_path / 'run'}"] if "output_dir" not in override else []):
        assert main(["pretrain", "--config", "demo", *extra, "train.device=cpu", "data.num_samples=64", override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("deepmim pretrain: error: ")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    bomb = (
        "{a: &a [x, x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], "
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], "
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d], f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]}"
    )
    start = time.perf_counter()
    assert main(["pretrain", "--config", "demo", "--print-config", f"model.target={bomb}"]) == 2
    err = capsys.readouterr().err
    assert "override 'model.target': its YAML aliases" in err and f"more than {MAX_YAML_VALUES:,}" in err
    assert time.perf_counter() - start < 10
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(f"model:\n  target: {bomb}\n")
    with pytest.raises(ConfigError, match="its YAML aliases"):
        read_yaml(recipe)
    with pytest.raises(ConfigError, match="into themselves"):  # an alias inside itself
        parse_overrides(["model.target=&a [*a]"])
    assert parse_overrides(["model.target={name: pixel, a: &x [1, 2], b: *x}"])["model"]["target"]["b"] == [1, 2]


# The numbers the descriptions may quote, per model size (IN-1K fine-tune top-1 / ADE20K mIoU). The DeepMIM
# paper reports ViT-B only; MAE reports ViT-B/L/H. Any other size must say there is none.
PAPER_NUMBERS = {"base": {"83.6", "82.6", "83.4", "84.2", "84.8", "85.6", "53.1"}, "large": {"85.9"}}


def test_recipe_descriptions_quote_only_numbers_of_their_own_size():
    import re

    from deepmim.config.loader import list_recipes, recipe_description

    checked = 0
    for path in list_recipes():
        size = re.search(r"_vit_(tiny|small|base|large)$", path.stem)
        if not size:
            continue
        description = recipe_description(path)
        quoted = set(re.findall(r"\b\d\d\.\d\b", description))
        allowed = PAPER_NUMBERS.get(size.group(1), set())
        assert quoted <= allowed, (path.stem, quoted - allowed)
        assert quoted or "no published number" in description, path.stem
        checked += 1
    assert checked == 20


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", "train.batch_size must be at least 1"),
        ("model.mask_ratio=1.0", r"model.mask_ratio must be in \(0, 1\)"),
        ("model.heads.0.block=9", r"model.heads.0.block = 9 is outside 1..6"),
        ("train.precision=fp8", "train.precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
        ("optim.base_lr=-1", "optim.base_lr must be a positive learning rate, got -1.0"),
        ("optim.lr=0", "optim.lr must be a positive learning rate"),
    ],
)
def test_print_config_refuses_the_values_a_run_would(override, message, capsys):
    assert re.search(message, cli_error(capsys, "pretrain", "--config", "demo", override, "--print-config"))
