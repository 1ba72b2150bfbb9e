"""`deepmim finetune`: timm's pieces wired as the MAE/BEiT recipe, exact resume (with mixup, and over
broken images), evaluation, export to timm and the errors that stop a run before it trains."""

import json
from pathlib import Path

import pytest
import torch

from deepmim.config.loader import ConfigError
from deepmim.models.classifier import build_classifier
from deepmim.tasks.finetune import (
    ClassifierConfig,
    layer_decay_groups,
    load_classifier,
    load_finetune_config,
    run_evaluate,
    run_finetune,
)
from tests.helpers.models import save_tiny_pretrained
from tests.helpers.runs import assert_same_weights, final_weights, rows


def tiny_finetune(pretrained, out, *extra):
    return load_finetune_config(
        "finetune_demo",
        [
            f"model.checkpoint={pretrained}",
            "data.img_size=16",
            "data.num_samples=160",
            "data.num_workers=0",
            "train.batch_size=32",
            "train.epochs=3",
            f"train.output_dir={out}",
            "train.progress=false",
            "train.tensorboard=false",
            "train.device=cpu",
            "train.precision=fp32",
            "train.log_every_steps=1",
            "optim.base_lr=2e-3",
            *extra,
        ],
    )


def test_layer_decay_scales_follow_the_formula(pretrained):
    model, _ = build_classifier(ClassifierConfig(checkpoint=str(pretrained)), 10, 16)
    cfg = load_finetune_config("finetune_demo", ["optim.layer_decay=0.6"])
    groups = layer_decay_groups(model, cfg.optim)
    scale_of = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            scale_of[names[id(p)]] = group["lr_scale"]
    depth = 4
    for i in range(depth):  # block i has layer id i + 1: scale 0.6 ** (L + 1 - (i + 1))
        assert scale_of[f"blocks.{i}.attn.qkv.weight"] == pytest.approx(0.6 ** (depth - i))
    assert scale_of["patch_embed.proj.weight"] == pytest.approx(0.6 ** (depth + 1))
    assert scale_of["head.weight"] == pytest.approx(1.0) and scale_of["fc_norm.weight"] == pytest.approx(1.0)
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"cls_token", "pos_embed", "head.bias", "blocks.0.norm1.weight"} <= no_decay
    assert "blocks.0.attn.qkv.weight" not in no_decay


def test_mixup_targets_sum_to_one():
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8)
    _, targets = mixup(images, labels)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert (targets > 0).sum(1).min() >= 2  # smoothed and mixed


def test_finetune_learns_resumes_exactly_and_evaluates(pretrained, tmp_path):
    result = run_finetune(
        tiny_finetune(pretrained, tmp_path / "full", "augment.mixup=0", "augment.cutmix=0", "train.ema_decay=0.9")
    )
    assert result.finished and result.step == 15
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["type"] == "eval"]
    assert len(evals) == 3 and {"top1", "top5", "loss", "ema_top1", "best_top1"} <= set(evals[0])
    losses = [r["loss"] for r in rows if r["type"] == "train"]
    assert sum(losses[-3:]) < sum(losses[:3])
    # stop after 7 steps, resume: identical weights (EMA included) to the uninterrupted run
    run_finetune(
        tiny_finetune(
            pretrained,
            tmp_path / "part",
            "augment.mixup=0",
            "augment.cutmix=0",
            "train.ema_decay=0.9",
            "train.max_steps=7",
        )
    )
    run_finetune(
        tiny_finetune(
            pretrained,
            tmp_path / "part",
            "augment.mixup=0",
            "augment.cutmix=0",
            "train.ema_decay=0.9",
            "train.resume=auto",
        )
    )
    full = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)
    part = torch.load(tmp_path / "part" / "checkpoint-last.pt", weights_only=True)
    for key in full["model"]:
        assert torch.equal(full["model"][key], part["model"][key]), key
    for key in full["hooks"]["ema"]:
        assert torch.equal(full["hooks"]["ema"][key], part["hooks"]["ema"][key]), key
    # `deepmim evaluate` on the checkpoint reproduces the last evaluation
    metrics = run_evaluate(str(tmp_path / "full" / "checkpoint-last.pt"))
    assert metrics["top1"] == pytest.approx(evals[-1]["top1"])
    model, cfg = load_classifier(tmp_path / "full" / "checkpoint-last.pt")
    assert model.num_classes == 10 and cfg.model.global_pool == "avg"


def test_finetune_with_mixup_resumes_exactly(pretrained, tmp_path):
    run_finetune(tiny_finetune(pretrained, tmp_path / "full", "train.epochs=2"))
    run_finetune(tiny_finetune(pretrained, tmp_path / "part", "train.epochs=2", "train.max_steps=3"))
    run_finetune(tiny_finetune(pretrained, tmp_path / "part", "train.epochs=2", "train.resume=auto"))
    full = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)["model"]
    part = torch.load(tmp_path / "part" / "checkpoint-last.pt", weights_only=True)["model"]
    assert all(torch.equal(full[k], part[k]) for k in full)


def test_class_count_mismatch_is_a_clear_error(pretrained, tmp_path):
    with pytest.raises(ConfigError, match="model.num_classes=5 but the data has 10 classes"):
        run_finetune(tiny_finetune(pretrained, tmp_path, "model.num_classes=5"))


@pytest.mark.parametrize("spec", ["rand-q9", "ran-m9-mstd0.5", "randaugment"])
def test_mistyped_auto_augment_is_a_clear_error_before_training(pretrained, tmp_path, spec):
    with pytest.raises(ConfigError, match=r"augment.auto_augment=.* is not a timm augmentation spec.*rand-m9"):
        run_finetune(tiny_finetune(pretrained, tmp_path, f"augment.auto_augment={spec}"))
    assert not (tmp_path / "checkpoint-last.pt").exists()


def test_odd_batch_with_mixup_is_refused(pretrained, tmp_path):
    with pytest.raises(ConfigError, match="even train.batch_size"):
        run_finetune(tiny_finetune(pretrained, tmp_path, "train.batch_size=31"))


def test_finetuned_model_exports_to_timm_with_equal_logits(pretrained, tmp_path):
    import timm

    from deepmim.cli.main import main

    run_finetune(tiny_finetune(pretrained, tmp_path / "ft", "train.epochs=1", "train.max_steps=2"))
    out = tmp_path / "classifier.safetensors"
    assert main(["export", str(tmp_path / "ft" / "checkpoint-last.pt"), "--out", str(out)]) == 0
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=4,
        num_heads=2,
        num_classes=10,
        global_pool="avg",
        checkpoint_path=str(out),
    ).eval()
    model, _ = load_classifier(tmp_path / "ft" / "checkpoint-last.pt")
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(vit(x), model(x))


def _broken_image_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (18, 18, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (root / "train" / "c0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    (root / "train" / "c1" / "empty.jpg").write_bytes(b"")
    (root / "train" / "c1" / "cut.png").write_bytes((root / "train" / "c1" / "0.png").read_bytes()[:60])
    return root


def test_a_mixup_finetune_over_broken_images_finishes_and_resumes_exactly(tmp_path):
    from deepmim.tasks.finetune import load_finetune_config, run_finetune

    data = _broken_image_folder(tmp_path / "data")
    pretrained = save_tiny_pretrained(tmp_path / "pre.pt")

    def cfg(out, *extra):  # 27 files (3 unreadable), batches of 6 with Mixup and CutMix: 4 steps an epoch
        return load_finetune_config(
            "finetune_demo",
            [
                f"model.checkpoint={pretrained}",
                "data.name=imagefolder",
                f"data.path={data}",
                "data.img_size=16",
                "data.num_workers=0",
                "train.batch_size=6",
                "train.epochs=2",
                f"train.output_dir={out}",
                "train.progress=false",
                "train.tensorboard=false",
                "train.device=cpu",
                "train.precision=fp32",
                "train.log_every_steps=3",
                "augment.auto_augment=null",
                *extra,
            ],
        )

    full = run_finetune(cfg(tmp_path / "full"))
    assert full.finished and full.step == 8
    epochs = rows(tmp_path / "full", "epoch")
    assert all(e["skipped_images"] >= 1 for e in epochs)  # counted (each epoch draws some of the 3 files)
    run_finetune(cfg(tmp_path / "part", "train.max_steps=3"))
    resumed = run_finetune(cfg(tmp_path / "part", "train.resume=auto"))
    assert resumed.finished and resumed.start_step == 3
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"))
    assert rows(tmp_path / "part", "epoch") == epochs
    assert [r["loss"] for r in rows(tmp_path / "part", "train")] == [
        r["loss"] for r in rows(tmp_path / "full", "train")
    ]


def test_a_one_class_finetune_is_refused(tmp_path):
    from PIL import Image

    from deepmim.tasks.finetune import load_finetune_config, run_finetune

    for split in ("train", "val"):
        (tmp_path / "data" / split / "only").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "data" / split / "only" / f"{i}.png")
    cfg = load_finetune_config(
        "finetune_demo",
        [
            f"model.checkpoint={save_tiny_pretrained(tmp_path / 'pre.pt')}",
            "data.name=imagefolder",
            f"data.path={tmp_path / 'data'}",
            "data.img_size=16",
            "data.num_workers=0",
            "train.batch_size=2",
            f"train.output_dir={tmp_path / 'run'}",
            "train.device=cpu",
        ],
    )
    with pytest.raises(ConfigError, match=r"1 class \(only\).*100% top-1"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists()
