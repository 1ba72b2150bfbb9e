"""deepmim study: arms x seeds as ordinary runs, resumable after a kill, reports from recorded results."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from deepmim.config.loader import ConfigError, list_recipes, recipe_task
from deepmim.tasks.study import StudyChangedError, load_study_config, run_study
from deepmim.tasks.study.runner import plan_study
from deepmim.tasks.study.tables import render_markdown
from tests.helpers.models import TINY_ENCODER

HEAD = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
QUIET = {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32"}


def tiny_study(out: Path, **changes) -> dict:
    """MAE and the untrained encoder on 64 embedded 16px images, 2 seeds: 4 epochs x 8 steps of pre-training
    (a checkpoint every 2 steps, numbered copies every 2 epochs), 1 fine-tuning epoch, every measure."""
    study = {
        "task": "study",
        "title": "tiny",
        "seeds": [0, 1],
        "output_dir": str(out),
        "data": {"name": "embedded", "img_size": 16, "num_samples": 64, "num_workers": 0},
        "pretrain": {
            "optim": {"base_lr": 1e-3, "warmup_epochs": 1},
            "train": {
                "epochs": 4,
                "batch_size": 8,
                "save_every_steps": 2,
                "save_every_epochs": 2,
                "plots": False,
                "log_every_steps": 4,
                **QUIET,
            },
        },
        "finetune": {"recipe": "finetune_demo", "overrides": {"train": {"epochs": 1, "batch_size": 16, **QUIET}}},
        "arms": [
            {"name": "mae", "model": {"encoder": TINY_ENCODER, "heads": [{"block": 4, **HEAD}]}},
            {"name": "random", "kind": "random"},
        ],
        "evaluate": {
            "probe": {"epochs": 3, "batch_size": 32},
            "attention_images": 16,
            "batch_size": 64,
            "device": "cpu",
        },
    }
    for key, value in changes.items():
        node = study
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return study


def write_recipe(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study))
    return path


def study_command(recipe: Path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[3] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    return [sys.executable, "-m", "deepmim", "study", "--config", str(recipe)], env


def comparable(results: dict, out: Path) -> dict:
    """The per-seed results without timings, with the study folder's path taken out."""

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("seconds", "summary")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node.replace(str(out), "OUT") if isinstance(node, str) else node

    return strip({name: arm["seeds"] for name, arm in results["arms"].items()})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted tiny study, run as a user runs it (the CLI, in a process of its own)."""
    root = tmp_path_factory.mktemp("study")
    out = root / "full"
    cmd, env = study_command(write_recipe(root / "tiny.yaml", tiny_study(out)))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), done


@pytest.mark.slow
def test_arms_and_seeds_make_their_runs_and_recorded_results(finished):
    out, results, done = finished
    assert list(results["arms"]) == ["mae", "random"] and results["seeds"] == [0, 1]
    stages = {
        "mae": ["attention", "convergence", "finetune", "pretrain", "probe"],
        "random": ["attention", "finetune", "init", "probe"],
    }
    for arm, names in stages.items():
        for seed in ("0", "1"):
            folder = out / arm / f"seed{seed}"
            assert sorted(p.stem for p in (folder / "stages").glob("*.json")) == names
            for name in names:
                record = json.loads((folder / "stages" / f"{name}.json").read_text())
                assert (
                    record["status"] == "done"
                    and record["result"].items()
                    <= {**results["arms"][arm]["seeds"][seed][name], "summary": record["result"].get("summary")}.items()
                )
            finetune = [json.loads(line) for line in (folder / "finetune" / "metrics.jsonl").read_text().splitlines()]
            evals = [r for r in finetune if r["type"] == "eval"]
            assert results["arms"][arm]["seeds"][seed]["finetune"]["top1"] == evals[-1]["top1"]
            probe = results["arms"][arm]["seeds"][seed]["probe"]
            assert sorted(probe["linear"]) == ["avg", "cls"] and sorted(probe["linear"]["cls"], key=int) == [
                "1",
                "2",
                "3",
                "4",
            ]
            assert probe["train_images"] == probe["val_images"] == 64
    mae = out / "mae" / "seed0" / "pretrain"
    assert sorted(p.name for p in mae.glob("checkpoint-*.pt")) == [
        "checkpoint-epoch0002.pt",
        "checkpoint-epoch0004.pt",
        "checkpoint-last.pt",
        "checkpoint-prev.pt",
    ]
    assert results["arms"]["mae"]["seeds"]["0"]["convergence"]["epochs"] == [0, 2, 4]
    assert results["arms"]["mae"]["seeds"]["0"]["pretrain"]["images"] == 4 * 64
    # the seed drives the run: different weights for different seeds
    w0 = torch.load(mae / "checkpoint-last.pt", weights_only=True)["model"]
    w1 = torch.load(out / "mae" / "seed1" / "pretrain" / "checkpoint-last.pt", weights_only=True)["model"]
    assert not torch.equal(w0["encoder.blocks.0.attn.qkv.weight"], w1["encoder.blocks.0.attn.qkv.weight"])
    # one line per stage start and end: 2 seeds x (5 + 4) stages
    assert done.stderr.count("  start  [") == done.stderr.count("  done   [") == 18
    assert "full config:" not in done.stderr  # the runs' own output is in their logs
    assert "full config:" in (out / "mae" / "seed0" / "logs" / "pretrain.log").read_text()


@pytest.mark.slow
def test_random_arm_is_the_initialisation_of_the_pretrain_arms(finished):
    from deepmim.config.loader import from_dict
    from deepmim.config.schema import ModelConfig
    from deepmim.models import DeepMIM

    out, results, _ = finished
    for seed in (0, 1):
        init = torch.load(out / "random" / f"seed{seed}" / "init" / "checkpoint.pt", weights_only=True)
        torch.manual_seed(seed)  # what run_pretrain does before building its model
        model = DeepMIM(from_dict(ModelConfig, init["config"]["model"]))
        for key, value in model.encoder.state_dict().items():
            assert torch.equal(init["model"][f"encoder.{key}"], value), key
        # epoch 0 of the MAE arm's convergence is the random arm of the same seed, number for number
        epoch0 = results["arms"]["mae"]["seeds"][str(seed)]["convergence"]["linear"]["avg"]["0"]
        probe = results["arms"]["random"]["seeds"][str(seed)]["probe"]["linear"]["avg"]
        assert epoch0 == {b: r["top1"] for b, r in probe.items()}


@pytest.mark.slow
def test_report_and_tables_come_from_the_results(finished):
    out, results, _ = finished
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(results["figures"]) == 4
    assert 'src="http' not in html and "<link" not in html
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f["file"] for f in results["figures"])
    assert (out / "results.md").read_text().split("\n", 3)[3] == render_markdown(results).split("\n", 3)[3]
    assert results["machine"]["torch"] == torch.__version__ and results["machine"]["cpu"]
    assert results["command"].startswith("deepmim study --config")


@pytest.mark.slow
def test_killed_study_continues_where_it_stopped_and_ends_as_an_uninterrupted_one(finished, tmp_path):
    full_out, full, _ = finished
    out = tmp_path / "killed"
    cmd, env = study_command(write_recipe(tmp_path / "tiny.yaml", tiny_study(out)))
    stderr_path = tmp_path / "killed.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    target = out / "mae" / "seed1" / "pretrain" / "checkpoint-last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not _step_at_least(target, 6) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    returncode = proc.wait()
    assert target.exists(), (
        f"no {target.name} after the kill (the study's exit status: {returncode}); "
        "its stderr:\n" + stderr_path.read_text(errors="replace")[-4000:]
    )
    step = torch.load(target, weights_only=True)["step"]
    assert 6 <= step < 32, "the kill must land in the middle of seed 1's pre-training"
    before = {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in out.glob("*/seed*/stages/*.json")
        if json.loads(p.read_text())["status"] == "done"
    }
    assert len(before) == 9  # seed 0: every stage of both arms
    kept_checkpoint = (out / "mae" / "seed0" / "pretrain" / "checkpoint-last.pt").stat().st_mtime_ns

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for path, (content, mtime) in before.items():  # finished stages: not recomputed, not rewritten
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime, path
    assert (out / "mae" / "seed0" / "pretrain" / "checkpoint-last.pt").stat().st_mtime_ns == kept_checkpoint
    assert done.stderr.count("  skip   [") == 9 and done.stderr.count("  start  [") == 9
    assert "mae/seed1 pretrain (resuming, attempt 2)" in done.stderr
    log = (out / "mae" / "seed1" / "logs" / "pretrain.log").read_text()
    assert f"resumed from {target} at step {step}" in log and "attempt 2" in log and "full config:" in log
    record = json.loads((out / "mae" / "seed1" / "stages" / "pretrain.json").read_text())
    assert len(record["attempts"]) == 2 and record["attempts"][0]["useful_s"] > 0
    resumed = json.loads((out / "results.json").read_text())
    assert comparable(resumed, out) == comparable(full, full_out)


def _step_at_least(path: Path, step: int) -> bool:
    try:
        return torch.load(path, weights_only=True)["step"] >= step
    except Exception:  # not written yet
        return False


def test_changed_inputs_are_refused_or_rerun_downstream_only(tmp_path):
    small = dict(seeds=[0], arms=[tiny_study(tmp_path)["arms"][0]], **{"finetune.enabled": False})
    recipe = write_recipe(tmp_path / "s.yaml", tiny_study(tmp_path / "out", **small))
    first = run_study(load_study_config(str(recipe)), command="test")
    assert len(first["computed"]) == 4  # pretrain, probe, attention, convergence
    again = run_study(load_study_config(str(recipe)), command="test")
    assert again["computed"] == [] and comparable(again, tmp_path) == comparable(first, tmp_path)

    with pytest.raises(StudyChangedError, match=r"mae/seed0 probe: probe\.epochs: 3 -> 5") as err:
        run_study(load_study_config(str(recipe), ["evaluate.probe.epochs=5"]), command="test")
    assert "convergence" in str(err.value) and "pretrain" not in str(err.value)
    rerun = run_study(load_study_config(str(recipe), ["evaluate.probe.epochs=5", "on_change=rerun"]), command="test")
    assert [label.split()[-1] for label in rerun["computed"]] == ["probe", "convergence"]
    assert rerun["config"]["evaluate"]["probe"]["epochs"] == 5

    with pytest.raises(StudyChangedError, match=r"mae/seed0 pretrain: pretrain\.train\.epochs: 4 -> 2"):
        run_study(load_study_config(str(recipe), ["pretrain.train.epochs=2", "evaluate.probe.epochs=5"]), command="t")
    rerun = run_study(
        load_study_config(str(recipe), ["pretrain.train.epochs=2", "evaluate.probe.epochs=5", "on_change=rerun"]),
        command="test",
    )
    assert [label.split()[-1] for label in rerun["computed"]] == ["pretrain", "probe", "attention", "convergence"]
    assert rerun["arms"]["mae"]["seeds"]["0"]["pretrain"]["images"] == 2 * 64
    assert sorted(p.name for p in (tmp_path / "out" / "mae" / "seed0" / "pretrain").glob("checkpoint-epoch*")) == [
        "checkpoint-epoch0002.pt"
    ]  # the old run's folder was deleted, not resumed


def test_study_config_is_checked_before_any_work(tmp_path):
    recipe = write_recipe(tmp_path / "s.yaml", tiny_study(tmp_path / "out"))
    with pytest.raises(ConfigError, match="unknown config key 'arms.0.modle'"):
        load_study_config(str(recipe), ["arms.0.modle={}"])
    with pytest.raises(ConfigError, match="unknown kind 'scratch'"):
        load_study_config(str(recipe), ["arms.1.kind=scratch"])
    with pytest.raises(ConfigError, match="distinct"):
        load_study_config(str(recipe), ["arms.1.name=mae"])
    with pytest.raises(ConfigError, match="evaluate.pools"):
        load_study_config(str(recipe), ["evaluate.pools=[mean]"])
    deeper = {"encoder": {**TINY_ENCODER, "depth": 6}, "heads": [{"block": 6, **HEAD}]}
    cfg = load_study_config(str(recipe), [f"arms.1.model={json.dumps(deeper)}"])
    with pytest.raises(ConfigError, match="different encoders.*depth"):
        run_study(cfg, command="test")
    for override, message in (
        ("pretrain.data={num_samples: 8}", "pretrain: data.num_samples is set by the study's own data"),
        ("pretrain.train.seed=3", "pretrain: train.seed is set by the study"),
        ("finetune.overrides.model.checkpoint=x.pt", "finetune.overrides: model.checkpoint"),
        ("arms.0.overrides=[data.hflip=false]", "arms.mae.overrides: data.hflip"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_study_config(str(recipe), [override])
    assert not (tmp_path / "out").exists()


def test_bundled_study_recipes_plan_their_stages(tmp_path):
    from deepmim.tasks.study.arms import build_arm

    recipes = [p.stem for p in list_recipes() if recipe_task(p) == "study"]
    assert sorted(recipes) == ["study_embedded_cpu", "study_fashion_mnist_cpu", "study_fashion_mnist_gpu"]
    for name in recipes:
        cfg = load_study_config(name, [f"output_dir={tmp_path / name}"])
        arms = [build_arm(a, cfg) for a in cfg.arms]
        kinds = sorted(a.kind for a in arms)
        assert kinds == ["pretrain", "pretrain", "random"] and len(cfg.seeds) >= 3, name
        planned = plan_study(cfg, arms, tmp_path / name)
        assert len(planned) == len(cfg.seeds) * 3
        encoders = {str(a.model_config().encoder) for a in arms}
        assert len(encoders) == 1, name  # MAE and DeepMIM share the encoder
        heads = sorted(len(a.model_config().heads) for a in arms if a.kind == "pretrain")
        assert heads[0] == 1 and heads[1] > 1, name  # an MAE arm and a DeepMIM arm
    gpu = load_study_config("study_fashion_mnist_gpu")
    mae = build_arm(gpu.arms[0], gpu).pretrain_config(0, tmp_path)
    assert mae.train.epochs >= 100 and mae.model.encoder.embed_dim == 192 and mae.model.encoder.depth == 12


def test_cli_prints_the_resolved_study_config(capsys):
    from deepmim.cli.main import main

    assert main(["study", "--config", "study_embedded_cpu", "--print-config", "seeds=[5,6,7]"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seeds"] == [5, 6, 7] and [a["kind"] for a in printed["arms"]] == ["pretrain", "pretrain", "random"]
    assert main(["study", "--config", "demo"]) == 2  # a pretrain recipe is refused with a hint


def test_typos_in_the_runs_the_study_makes_stop_at_load(tmp_path):
    recipe = write_recipe(tmp_path / "s.yaml", tiny_study(tmp_path / "out"))
    with pytest.raises(ConfigError, match="unknown config key 'train.epohcs'"):
        load_study_config(str(recipe), ["pretrain.train.epohcs=3"])
    with pytest.raises(ConfigError, match="unknown config key 'augment.mixupp'"):
        load_study_config(str(recipe), ["finetune.overrides.augment.mixupp=0"])


def test_pretrain_data_changes_the_pretraining_data_only(tmp_path):
    """pretrain_data: pre-train on every train image while the probes and fine-tuning keep the labelled subset."""
    from deepmim.tasks.study.arms import build_arm
    from deepmim.tasks.study.runner import plan_study

    study = tiny_study(tmp_path / "out")
    study["data"]["max_samples"] = 32
    study["pretrain_data"] = {"max_samples": None}
    cfg = load_study_config(str(write_recipe(tmp_path / "s.yaml", study)))
    arms = [build_arm(a, cfg) for a in cfg.arms]
    pre = arms[0].pretrain_config(0, tmp_path / "p")
    assert pre.data.max_samples is None and pre.data.num_samples == 64
    stages = {s.name: s for s in plan_study(cfg, arms, tmp_path / "out")[0].stages}
    assert stages["pretrain"].inputs["pretrain"]["data"]["max_samples"] is None
    assert json.dumps(stages["probe"].inputs, default=str).count('"max_samples": 32') >= 1
    assert json.dumps(stages["finetune"].inputs, default=str).count('"max_samples": 32') >= 1
    study["pretrain_data"] = {"max_smaples": None}
    with pytest.raises(ConfigError, match="max_smaples"):
        load_study_config(str(write_recipe(tmp_path / "t.yaml", study)))
