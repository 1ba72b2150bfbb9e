"""Settings under fault: sizes that would divide by zero or build nothing, NaN, a seed past 64 bits, an empty
output folder, a negative head weight, unknown keys inside a target, a YAML alias bomb and a Hugging Face
config.json with impossible sizes: each refused in one paragraph with exit code 2, and --print-config
refuses exactly what the run refuses."""
import json
import time

import pytest

from deepmim.checkpoint import CheckpointError
from deepmim.cli.main import main
from deepmim.config.loader import MAX_YAML_VALUES, ConfigError, parse_overrides, read_yaml

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
    for extra in (["--print-config"], [f"train.output_dir={tmp_path / 'run'}"] if "output_dir" not in override
                  else []):
        assert main(["pretrain", "--config", "demo", *extra, "train.device=cpu", "data.num_samples=64",
                     override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("deepmim pretrain: error: ")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    bomb = ("{a: &a [x, x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], "
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], "
            "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d], f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]}")
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


@pytest.mark.parametrize("key,value", [("hidden_size", 10 ** 7), ("hidden_size", -128), ("hidden_size", "128"),
                                       ("num_hidden_layers", 0), ("patch_size", 0)])
def test_a_hugging_face_config_with_impossible_sizes_is_refused(tmp_path, capsys, key, value):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=128, image_size=16, patch_size=4, decoder_hidden_size=32,
                                       decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                       decoder_intermediate_size=128)
    folder = tmp_path / "hf"
    transformers.ViTMAEForPreTraining(config).save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw[key] = value
    (folder / "config.json").write_text(json.dumps(raw))
    capsys.readouterr()  # save_pretrained's progress
    start = time.perf_counter()
    assert main(["export", str(folder), "--out", str(tmp_path / "enc.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{folder / 'config.json'}'" in err[0] and key.split("_")[0] in err[0]
    assert time.perf_counter() - start < 20 and not (tmp_path / "enc.safetensors").exists()
    from deepmim.models.loading import load_checkpoint
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(folder)
