"""`deepmim segment`: layer decay, sliding-window inference, the ADE20K recipe, exact resume, the CLI's
scores and colour predictions, strict JSON summaries, a tiny model that overfits, and two processes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from deepmim.cli.main import main
from deepmim.config.loader import ConfigError
from deepmim.data.segmentation import build_seg_dataset
from deepmim.models.segmentation import UperNetViT
from deepmim.tasks.segment import (
    SegEvalConfig,
    build_segmentor,
    evaluate_segmentation,
    layer_decay_groups,
    load_segment_config,
    load_segmentor,
    predict_probs,
    run_segment_train,
    slide_logits,
)
from tests.helpers.models import TINY_ENCODER_CONFIG, save_tiny_pretrained
from tests.helpers.runs import strict_load, tiny_segment_overrides


def tiny_segment(pretrained, out, *extra):
    """The demo recipe shrunk: 16px embedded shapes, the tiny pre-trained encoder, no augmentation noise."""
    return load_segment_config(
        "upernet_demo",
        [
            *tiny_segment_overrides(pretrained, out),
            "data.val_samples=8",
            "eval.stride=11",
            "train.batch_size=4",
            "train.iterations=4",
            "optim.warmup_iters=1",
            "train.log_every_steps=1",
            *extra,
        ],
    )


def test_layer_decay_puts_heads_last_and_embeddings_first(pretrained):
    cfg = load_segment_config("upernet_demo", [f"model.checkpoint={pretrained}"])
    model, _ = build_segmentor(cfg.model, 11, 16)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in layer_decay_groups(model, cfg.optim) for p in g["params"]}
    d = cfg.optim.layer_decay
    assert scale["decode_head.classifier.weight"] == scale["neck.up4.0.weight"] == pytest.approx(1.0)
    assert scale["backbone.vit.blocks.3.attn.qkv.weight"] == pytest.approx(d)
    assert scale["backbone.vit.blocks.0.attn.qkv.weight"] == pytest.approx(d**4)
    assert scale["backbone.vit.pos_embed"] == pytest.approx(d**5)


@pytest.mark.parametrize("rel_pos_bias", [True, False])
def test_sliding_window_equals_whole_image_when_the_crop_covers_it(rel_pos_bias):
    model = UperNetViT(
        TINY_ENCODER_CONFIG, 5, 16, [0, 1, 2, 3], channels=16, aux_channels=8, rel_pos_bias=rel_pos_bias
    ).eval()
    image = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        whole = model(image)
        torch.testing.assert_close(slide_logits(model, image, 5, crop=16, stride=11), whole, rtol=0, atol=0)
        slide = predict_probs(model, image, SegEvalConfig(mode="slide", stride=11), 16, 5)
        assert torch.equal(slide, predict_probs(model, image, SegEvalConfig(mode="whole"), 16, 5))


def test_sliding_windows_cover_every_pixel_and_average_overlaps():
    seen = []

    def ones(window):
        seen.append(tuple(window.shape[-2:]))
        return torch.ones(1, 2, *window.shape[-2:])

    logits = slide_logits(ones, torch.zeros(1, 3, 40, 24), 2, crop=16, stride=11)
    assert torch.equal(logits, torch.ones(1, 2, 40, 24))  # every pixel covered, overlaps averaged
    assert len(seen) == 4 * 2 and set(seen) == {(16, 16)}  # rows: 0, 11, 22, 24; cols: 0, 8
    small = slide_logits(ones, torch.zeros(1, 3, 10, 12), 2, crop=16, stride=11)
    assert small.shape == (1, 2, 10, 12) and seen[-1] == (16, 16)  # padded up to the crop


def test_relative_position_bias_refuses_other_sizes_in_whole_mode():
    model = UperNetViT(TINY_ENCODER_CONFIG, 5, 16, [0, 1, 2, 3], channels=16, aux_channels=8, rel_pos_bias=True).eval()
    with pytest.raises(ConfigError, match="eval.mode=slide"):
        model(torch.randn(1, 3, 24, 24))
    plain = UperNetViT(TINY_ENCODER_CONFIG, 5, 16, [0, 1, 2, 3], channels=16, aux_channels=8, rel_pos_bias=False).eval()
    assert plain(torch.randn(1, 3, 22, 26)).shape == (1, 5, 22, 26)  # pos embed resampled, padded to 4


def test_ade20k_recipe_has_the_authors_settings():
    cfg = load_segment_config("upernet_vit_base_ade20k")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.layer_decay) == (5e-5, 0.05, 0.9)
    assert (cfg.optim.schedule, cfg.optim.warmup_iters, cfg.train.iterations) == ("poly", 1500, 160000)
    assert (cfg.data.crop_size, cfg.eval.stride, cfg.eval.mode, cfg.data.name) == (512, 341, "slide", "ade20k")
    assert (cfg.model.out_indices, cfg.model.aux_weight, cfg.model.pool_scales) == ([3, 5, 7, 11], 0.4, [1, 2, 3, 6])
    assert cfg.model.drop_path == 0.1 and cfg.model.rel_pos_bias and cfg.model.layer_scale == 1.0
    with pytest.raises(ConfigError, match="train.iterations"):
        load_segment_config("upernet_demo", ["train.epochs=3"])
    with pytest.raises(ConfigError, match="multiple of train.eval_every"):
        load_segment_config("upernet_demo", ["train.iterations=300", "train.eval_every=200"])
    with pytest.raises(ConfigError, match="deepmim finetune"):
        load_segment_config("finetune_demo")


def test_training_resumes_exactly_and_eval_reproduces_its_scores(pretrained, tmp_path):
    straight = tmp_path / "straight"
    result, scores = run_segment_train(tiny_segment(pretrained, straight))
    assert result.finished and result.step == 4 and 0 <= scores["mIoU"] <= 100
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["type"] == "eval"] == [2.0, 4.0]
    resumed = tmp_path / "resumed"
    run_segment_train(tiny_segment(pretrained, resumed, "train.max_steps=2"))
    run_segment_train(tiny_segment(pretrained, resumed, "train.resume=auto"))
    a = torch.load(straight / "checkpoint-last.pt", weights_only=False)["model"]
    b = torch.load(resumed / "checkpoint-last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    model, cfg, names = load_segmentor(straight / "checkpoint-last.pt")
    assert names[0] == "background" and len(names) == 11
    again = evaluate_segmentation(model, build_seg_dataset(cfg.data, "val"), cfg, torch.device("cpu"), "fp32")
    assert again["mIoU"] == pytest.approx(scores["mIoU"])


def test_cli_segment_eval_prints_scores_and_saves_colour_predictions(pretrained, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "segment",
        "train",
        "--config",
        "upernet_demo",
        *tiny_segment_overrides(pretrained, out),
        "data.val_samples=3",
        "train.batch_size=4",
        "train.iterations=2",
        "optim.warmup_iters=1",
    ]
    assert main(args) == 0
    assert "mIoU" in capsys.readouterr().out
    preds, scores = tmp_path / "preds", tmp_path / "scores.json"
    assert (
        main(
            [
                "segment",
                "eval",
                str(out / "checkpoint-last.pt"),
                "eval.flip=true",
                "--save-predictions",
                str(preds),
                "--out",
                str(scores),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "background" in printed and "aAcc" in printed
    assert sorted(p.name for p in preds.iterdir()) == ["val_00000.png", "val_00001.png", "val_00002.png"]
    assert Image.open(preds / "val_00000.png").size == (48, 16)  # image | prediction | label
    assert set(json.loads(scores.read_text())) >= {"mIoU", "mAcc", "aAcc", "IoU", "classes"}
    assert main(["segment", "eval", str(tmp_path / "missing.pt")]) == 2


def test_tiny_model_overfits_a_few_embedded_images(pretrained, tmp_path):
    """4 images, no augmentation noise, validation on the training images themselves (~7 s;
    it reached 98.3 mIoU when written)."""
    cfg = tiny_segment(
        pretrained,
        tmp_path,
        "data.num_samples=4",
        "data.val_split=train",
        "train.iterations=80",
        "train.eval_every=80",
        "data.ratio_range=[1.0,1.0]",
        "data.photometric=false",
        "data.hflip=false",
        "model.drop_path=0",
        "model.dropout=0",
        "optim.lr=2e-3",
        "optim.warmup_iters=10",
        "optim.layer_decay=1.0",
        "model.channels=32",
    )
    _, scores = run_segment_train(cfg)
    assert scores["mIoU"] > 90 and scores["aAcc"] > 95, scores


@pytest.mark.slow
def test_two_processes_train_and_count_every_validation_pixel_once(pretrained, tmp_path):
    """DDP training on 2 gloo processes, then the sharded evaluation (5 images: shards of 3 and 2)
    must give the single-process scores exactly."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    common = [
        "segment",
        "train",
        "--config",
        "upernet_demo",
        *tiny_segment_overrides(pretrained, out),
        "data.val_samples=5",
        "train.batch_size=2",
        "train.iterations=2",
        "optim.warmup_iters=1",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "deepmim"]
    done = subprocess.run(torchrun + common, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = json.loads((out / "eval.json").read_text())
    done = subprocess.run(
        torchrun + ["segment", "eval", str(out / "checkpoint-last.pt"), "--out", str(tmp_path / "two.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["segment", "eval", str(out / "checkpoint-last.pt"), "--out", str(tmp_path / "one.json")]) == 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["mIoU"] == two["mIoU"] == pytest.approx(trained["mIoU"]) and one["aAcc"] == two["aAcc"]
    assert one["IoU"] == two["IoU"]


@pytest.mark.slow
def test_segmentation_summary_tables_and_json(tmp_path, capsys):
    pretrained = save_tiny_pretrained(tmp_path / "pre.pt")
    out = tmp_path / "run"
    assert (
        main(
            [
                "segment",
                "train",
                "--config",
                "upernet_demo",
                *tiny_segment_overrides(pretrained, out),
                "data.val_samples=2",
                "train.batch_size=4",
                "train.iterations=4",
                "optim.warmup_iters=50",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "  steps   4 iterations, validation every 2; batch 4 per process" in captured.err
    assert "50 warm-up iteration(s)" in captured.err
    assert "warning the warm-up (50 steps) is longer than the run (4 steps)" in captured.err
    assert "optim.warmup_iters=N" in captured.err
    trained = strict_load((out / "eval.json").read_text())
    assert len(trained["IoU"]) == 11 and None in trained["IoU"]  # absent classes: null, all listed
    present = sum(trained["present"])
    assert 0 < present < 11
    assert f"({present} of 11 classes occur in the evaluated labels; the JSON lists all)" in captured.out
    scores = tmp_path / "scores.json"
    assert main(["segment", "eval", str(out / "checkpoint-last.pt"), "--out", str(scores)]) == 0
    printed = capsys.readouterr().out
    evaluated = strict_load(scores.read_text())
    assert evaluated["data"]["images"] == {"val": 2} and "data: embedded (recorded in" in printed
    table_rows = printed.split("IoU")[1].splitlines()[1:-2]
    assert len(table_rows) == present and "nan" not in printed
