"""Pre-training recipes for every target train on CPU with finite, falling loss (tiny variants)."""

import json
from pathlib import Path

import pytest
import torch

from deepmim.tasks.pretrain import load_pretrain_config, run_pretrain
from tests.helpers.models import tiny_clip

CPU = [
    "data.num_samples=192",
    "train.batch_size=32",
    "train.epochs=3",
    "data.num_workers=0",
    "train.progress=false",
    "train.tensorboard=false",
    "train.plots=false",
    "train.log_every_steps=1",
    "train.device=cpu",
    "train.precision=fp32",
    "optim.warmup_epochs=0.5",
]


def _train(recipe, out: Path, *extra):
    cfg = load_pretrain_config(recipe, CPU + [f"train.output_dir={out}", *extra])
    run_pretrain(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "train"]


def _assert_falls(rows):
    losses = [r["loss"] for r in rows]
    assert all(isinstance(v, float) for v in losses), losses  # non-finite values are logged as strings
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("mae")
    _assert_falls(_train("mae_vit_micro_p4_32", out))
    return out / "checkpoint-last.pt"


@pytest.mark.slow
def test_hog_recipe_trains(tmp_path):
    _assert_falls(_train("deepmim_hog_vit_micro_p4_32", tmp_path))


@pytest.mark.slow
def test_teacher_recipe_trains_with_our_checkpoint_as_teacher(tmp_path, mae_checkpoint):
    rows = _train("deepmim_teacher_vit_micro_p4_32", tmp_path, f"model.target.path={mae_checkpoint}")
    _assert_falls(rows)
    assert {"loss_block3", "loss_block6"} <= set(rows[0])
    assert all(0 <= r["loss_block6"] <= 4 for r in rows)  # 2 - 2cos is bounded


@pytest.mark.slow
def test_hybrid_recipe_trains_against_frozen_mae(tmp_path, mae_checkpoint):
    paths = [f"model.heads.{i}.target.path={mae_checkpoint}" for i in range(3)]
    _assert_falls(_train("deepmim_hybrid_vit_micro_p4_32", tmp_path, *paths))


def test_teacher_recipe_without_path_stops_before_work(tmp_path):
    from deepmim.cli.main import main

    assert (
        main(
            [
                "pretrain",
                "--config",
                "deepmim_clip_vit_base",
                f"train.output_dir={tmp_path}",
                "data.name=embedded",
                "data.num_samples=64",
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_deepmim_clip_recipe_trains_with_an_openai_layout_clip_file(tmp_path):
    """The released model's recipe, shrunk, with a random-weight CLIP saved in OpenAI's layout."""
    pytest.importorskip("open_clip")

    torch.manual_seed(0)
    clip = tiny_clip(quick_gelu=True)  # 16px, patch 4, 48-d projected tokens
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    shrink = [
        "model.encoder.img_size=16",
        "model.encoder.patch_size=4",
        "model.encoder.embed_dim=32",
        "model.encoder.depth=4",
        "model.encoder.num_heads=2",
        "data.name=embedded",
        "data.img_size=16",
        "data.path=null",
        f"model.target.path={tmp_path / 'clip.pt'}",
        "model.target.dim=48",
    ]
    for i in range(4):
        shrink += [
            f"model.heads.{i}.block={i + 1}",
            f"model.heads.{i}.decoder_dim=32",
            f"model.heads.{i}.decoder_depth=1",
            f"model.heads.{i}.decoder_heads=2",
        ]
    rows = _train("deepmim_clip_vit_base", tmp_path / "run", *shrink, "optim.base_lr=3e-3")
    _assert_falls(rows)
    assert {f"loss_block{b}" for b in (1, 2, 3, 4)} <= set(rows[0])
    assert all(0 <= r["loss_block4"] <= 4 for r in rows)
