import pytest

from deepmim.config.loader import (ConfigError, deep_merge, from_dict, list_recipes, parse_overrides,
                                   recipe_task, resolve_recipe_path)
from deepmim.config.schema import PretrainConfig, TrainConfig
from deepmim.models.deepmim import validate_model_config
from deepmim.tasks.pretrain import load_pretrain_config


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epohcs'. Did you mean 'epochs'"):
        load_pretrain_config("demo", ["train.epohcs=3"])


@pytest.mark.parametrize("override,message", [
    ("train.epochs=three", r"train.epochs: expected int"),
    ("train.epochs=2.5", r"train.epochs: expected int"),
    ("optim.base_lr=fast", r"optim.base_lr: expected float"),
    ("train.progress=maybe", r"train.progress: expected bool"),
    ("model.heads.0.weight=[1]", r"model.heads.0.weight: expected float"),
    ("data=5", r"data: expected a mapping"),
    ("epochs", r"not of the form key=value"),
])
def test_wrong_types_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config("demo", [override])


def test_overrides_nest_index_lists_and_parse_yaml_values():
    cfg = load_pretrain_config("demo", ["train.epochs=3", "model.heads.1.weight=0.5", "optim.base_lr=1e-3",
                                        "train.resume=auto", "model.target.norm_pix=false"])
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
    cfg = load_pretrain_config("demo", ["data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]",
                                        "model.target={name: hog, cell_size: 4}",
                                        "model.heads.0.target={name: hog, cell_size: 4, mean: [0, 0, 0]}"])
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
