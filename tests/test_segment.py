"""Semantic segmentation: pyramid shapes, metrics against hand counts, label mapping, data errors,
sliding-window inference, the poly schedule, exact resume, and a tiny model that overfits."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepmim.analysis.segmentation_metrics import confusion_matrix, per_class_table, segmentation_scores
from deepmim.cli.main import main
from deepmim.config.loader import ConfigError
from deepmim.config.schema import EncoderConfig
from deepmim.data.errors import DataError
from deepmim.data.segmentation import (MaskFolder, SegDataConfig, SegTransform, StreamDataset, build_seg_dataset,
                                       map_labels, random_crop_box)
from deepmim.models import DeepMIM
from deepmim.models.presets import preset_config
from deepmim.models.segmentation import UperNetViT, default_out_indices
from deepmim.tasks.segment import (SegEvalConfig, build_segmentor, evaluate_segmentation, layer_decay_groups,
                                   load_segment_config, load_segmentor, predict_probs, run_segment_train,
                                   slide_logits)
from deepmim.training.schedule import warmup_poly_lr
from tests.conftest import save_tiny_pretrained, tiny_model_config

TINY = EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return save_tiny_pretrained(tmp_path_factory.mktemp("pre") / "checkpoint-last.pt")


def tiny_segment(pretrained, out, *extra):
    """The demo recipe shrunk: 16px embedded shapes, the tiny pre-trained encoder, no augmentation noise."""
    return load_segment_config("upernet_demo", [
        f"model.checkpoint={pretrained}", "model.channels=16", "model.aux_channels=8", "data.img_size=16",
        "data.scale=[16,16]", "data.crop_size=16", "data.num_samples=8", "data.val_samples=8",
        "data.num_workers=0", "eval.crop_size=16", "eval.stride=11", "train.batch_size=4",
        "train.iterations=4", "train.eval_every=2", "optim.warmup_iters=1", f"train.output_dir={out}",
        "train.progress=false", "train.tensorboard=false", "train.device=cpu", "train.precision=fp32",
        "train.log_every_steps=1", *extra])


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("preset,depth,indices", [("mae_vit_small", 12, [3, 5, 7, 11]),
                                                  ("mae_vit_base", 12, [3, 5, 7, 11]),
                                                  ("mae_vit_large", 24, [7, 11, 15, 23])])
def test_pyramid_has_strides_4_8_16_32_for_each_preset(preset, depth, indices):
    enc = preset_config(preset).encoder
    assert enc.depth == depth and default_out_indices(depth) == indices
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = UperNetViT(enc, 150, 512, indices, channels=768)
        feats = model.features(torch.empty(2, 3, 512, 512))
        main_logits, aux_logits = model(torch.empty(2, 3, 512, 512), train_outputs=True)
    assert [tuple(f.shape) for f in feats] == [(2, enc.embed_dim, s, s) for s in (128, 64, 32, 16)]
    assert tuple(main_logits.shape) == (2, 150, 128, 128) and tuple(aux_logits.shape) == (2, 150, 32, 32)


def test_tiny_pyramid_and_logits_at_the_input_size():
    model = UperNetViT(TINY, 5, 16, default_out_indices(4), channels=16, aux_channels=8).eval()
    assert default_out_indices(4) == [0, 1, 2, 3] and default_out_indices(6) == [1, 2, 3, 5]
    feats = model.features(torch.randn(2, 3, 16, 16))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]  # strides 1, 2, 4, 8 of patch 4
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 5, 16, 16)


def test_backbone_reproduces_the_pretrained_encoder(pretrained):
    """BEiT layout (q/v bias only, zero relative bias, layer scale 1) == our encoder's blocks."""
    source = DeepMIM(tiny_model_config())
    source.load_state_dict(torch.load(pretrained, weights_only=True)["model"])
    seg, _ = build_segmentor(load_segment_config("upernet_demo", [f"model.checkpoint={pretrained}",
                                                                  "model.drop_path=0"]).model, 11, 16)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        taps, _ = source.encoder.eval()(images, taps=[1, 2, 3, 4])
        maps = seg.backbone.eval()(images)
    for block, got in zip((1, 2, 3, 4), maps):
        want = taps[block][:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_layer_decay_puts_heads_last_and_embeddings_first(pretrained):
    cfg = load_segment_config("upernet_demo", [f"model.checkpoint={pretrained}"])
    model, _ = build_segmentor(cfg.model, 11, 16)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in layer_decay_groups(model, cfg.optim) for p in g["params"]}
    d = cfg.optim.layer_decay
    assert scale["decode_head.classifier.weight"] == scale["neck.up4.0.weight"] == pytest.approx(1.0)
    assert scale["backbone.vit.blocks.3.attn.qkv.weight"] == pytest.approx(d)
    assert scale["backbone.vit.blocks.0.attn.qkv.weight"] == pytest.approx(d ** 4)
    assert scale["backbone.vit.pos_embed"] == pytest.approx(d ** 5)


# ----------------------------------------------------------------------------- metrics


def test_miou_from_a_hand_checked_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    conf = confusion_matrix(pred, target, 3)
    # rows = truth: class 0 -> {0: 1, 1: 1}; class 1 -> {1: 2, 2: 1}; class 2 -> {0: 1, 2: 1}; 255 dropped
    assert conf.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    s = segmentation_scores(conf)
    # IoU: 0 -> 1 / (2 + 2 - 1) = 1/3, 1 -> 2 / (3 + 3 - 2) = 1/2, 2 -> 1 / (2 + 2 - 1) = 1/3
    assert s["IoU"] == pytest.approx([100 / 3, 50, 100 / 3])
    assert s["mIoU"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert s["mAcc"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert s["aAcc"] == pytest.approx(100 * 4 / 7)
    table = per_class_table(s, ["sky", "road", "tree"])
    assert "road" in table and "50.00" in table and "mIoU 38.89" in table


def test_ignore_index_is_never_counted():
    target = torch.full((8, 8), 255)
    target[:2] = 1
    pred_a, pred_b = torch.zeros(8, 8, dtype=torch.long), torch.randint(0, 4, (8, 8))
    pred_b[:2] = pred_a[:2]
    conf_a, conf_b = confusion_matrix(pred_a, target, 4), confusion_matrix(pred_b, target, 4)
    assert torch.equal(conf_a, conf_b) and conf_a.sum() == 16 and conf_a[1, 0] == 16
    s = segmentation_scores(conf_a)  # classes absent from labels and predictions: NaN, out of the mean
    assert math.isnan(s["IoU"][2]) and math.isnan(s["IoU"][3]) and s["mIoU"] == 0.0 and s["aAcc"] == 0.0


def test_reduce_zero_label_maps_ade20k_values():
    raw = np.array([[0, 1, 150], [255, 2, 0]], dtype=np.uint8)
    assert map_labels(raw, 150, True, 255, "m.png").tolist() == [[255, 0, 149], [255, 1, 255]]
    assert map_labels(raw[:, 1:2], 3, False, 255, "m.png").tolist() == [[1], [2]]


# ----------------------------------------------------------------------------- data


def write_pair(root: Path, split: str, stem: str, mask: np.ndarray, size=None, masks="annotations"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / masks / split).mkdir(parents=True, exist_ok=True)
    h, w = size or mask.shape
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "images" / split / f"{stem}.jpg")
    Image.fromarray(mask.astype(np.uint8)).save(root / masks / split / f"{stem}.png")


def test_ade20k_layout_reads_and_reduces_labels(tmp_path):
    write_pair(tmp_path, "training", "a", np.array([[0, 1], [150, 7]]))
    dataset = build_seg_dataset(SegDataConfig(name="ade20k", path=str(tmp_path)), "train")
    sample = dataset[0]
    assert len(dataset) == 1 and dataset.num_classes == 150 and sample.name == "a"
    assert (dataset.classes[0], dataset.classes[44], dataset.classes[149]) == ("wall", "chest of drawers", "flag")
    assert sample.label.tolist() == [[255, 0], [149, 6]] and sample.image.shape == (3, 2, 2)


def test_mask_folder_errors_name_the_file(tmp_path):
    write_pair(tmp_path, "train", "bad_value", np.array([[0, 9]]), masks="masks")
    write_pair(tmp_path, "train", "bad_size", np.array([[0, 1]]), size=(3, 3), masks="masks")
    dataset = MaskFolder(str(tmp_path), "train", num_classes=5, mask_dir="masks")
    with pytest.raises(DataError, match=r"bad_size\.png.*2x1.*bad_size\.jpg.*3x3"):
        dataset[0]
    with pytest.raises(DataError, match=r"bad_value\.png' has values 9 outside the 5 classes"):
        dataset[1]
    (tmp_path / "images" / "train" / "orphan.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"missing mask '.*orphan\.png'"):
        MaskFolder(str(tmp_path), "train", num_classes=5, mask_dir="masks")
    with pytest.raises(DataError, match="data.num_classes is required"):
        build_seg_dataset(SegDataConfig(name="maskfolder", path=str(tmp_path)), "train")


def test_training_crops_pad_with_ignore_and_replay_from_their_position():
    cfg = SegDataConfig(img_size=32, scale=[32, 32], ratio_range=[0.5, 1.25], crop_size=40, num_samples=6)
    stream = StreamDataset(build_seg_dataset(cfg, "train"), SegTransform(cfg, train=True), seed=3)
    image, label = stream[17]
    assert image.shape == (3, 40, 40) and label.shape == (40, 40)
    assert (label == 255).any()  # rescaled by <= 1.25 of 32 px: always padded to 40
    again_image, again_label = stream[17]
    assert torch.equal(image, again_image) and torch.equal(label, again_label)
    assert sorted(stream.index_at(p) for p in range(6)) == list(range(6))  # one pass = each image once


def test_crop_redraws_until_no_class_dominates():
    label = torch.zeros(64, 64, dtype=torch.long)
    label[:, 32:] = 1  # a 32-wide crop at `left` holds left/32 of class 1

    def fractions(ratio):
        rng = np.random.default_rng(0)
        boxes = [random_crop_box(label, 32, rng, ratio, 255) for _ in range(20)]
        return [(label[t:t + h, x:x + w] == 1).float().mean().item() for t, x, h, w in boxes]

    assert all(0.25 < f < 0.75 for f in fractions(0.75))
    assert any(not 0.25 < f < 0.75 for f in fractions(1.0))  # unconstrained crops do go there


# ----------------------------------------------------------------------------- inference


@pytest.mark.parametrize("rel_pos_bias", [True, False])
def test_sliding_window_equals_whole_image_when_the_crop_covers_it(rel_pos_bias):
    model = UperNetViT(TINY, 5, 16, [0, 1, 2, 3], channels=16, aux_channels=8, rel_pos_bias=rel_pos_bias).eval()
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
    model = UperNetViT(TINY, 5, 16, [0, 1, 2, 3], channels=16, aux_channels=8, rel_pos_bias=True).eval()
    with pytest.raises(ConfigError, match="eval.mode=slide"):
        model(torch.randn(1, 3, 24, 24))
    plain = UperNetViT(TINY, 5, 16, [0, 1, 2, 3], channels=16, aux_channels=8, rel_pos_bias=False).eval()
    assert plain(torch.randn(1, 3, 22, 26)).shape == (1, 5, 22, 26)  # pos embed resampled, padded to 4


# ----------------------------------------------------------------------------- schedule, config, training


def test_poly_schedule_with_linear_warmup_matches_mmcv():
    lr = lambda s: warmup_poly_lr(s, total_steps=100, warmup_steps=10, peak_lr=1.0, min_lr=0.0,
                                  power=1.0, warmup_ratio=1e-6)
    assert lr(0) == pytest.approx(1e-6)
    assert lr(5) == pytest.approx(0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert lr(10) == pytest.approx(0.9) and lr(50) == pytest.approx(0.5) and lr(100) == 0.0


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
    args = ["segment", "train", "--config", "upernet_demo", f"model.checkpoint={pretrained}", "model.channels=16",
            "model.aux_channels=8", "data.img_size=16", "data.scale=[16,16]", "data.crop_size=16",
            "data.num_samples=8", "data.val_samples=3", "data.num_workers=0", "eval.crop_size=16",
            "train.batch_size=4", "train.iterations=2", "train.eval_every=2", "optim.warmup_iters=1",
            f"train.output_dir={out}", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
            "train.precision=fp32"]
    assert main(args) == 0
    assert "mIoU" in capsys.readouterr().out
    preds, scores = tmp_path / "preds", tmp_path / "scores.json"
    assert main(["segment", "eval", str(out / "checkpoint-last.pt"), "eval.flip=true",
                 "--save-predictions", str(preds), "--out", str(scores)]) == 0
    printed = capsys.readouterr().out
    assert "background" in printed and "aAcc" in printed
    assert sorted(p.name for p in preds.iterdir()) == ["val_00000.png", "val_00001.png", "val_00002.png"]
    assert Image.open(preds / "val_00000.png").size == (48, 16)  # image | prediction | label
    assert set(json.loads(scores.read_text())) >= {"mIoU", "mAcc", "aAcc", "IoU", "classes"}
    assert main(["segment", "eval", str(tmp_path / "missing.pt")]) == 2


def test_tiny_model_overfits_a_few_embedded_images(pretrained, tmp_path):
    """4 images, no augmentation noise, validation on the training images themselves (~7 s;
    it reached 98.3 mIoU when written)."""
    cfg = tiny_segment(pretrained, tmp_path, "data.num_samples=4", "data.val_split=train", "train.iterations=80",
                       "train.eval_every=80", "data.ratio_range=[1.0,1.0]", "data.photometric=false",
                       "data.hflip=false", "model.drop_path=0", "model.dropout=0", "optim.lr=2e-3",
                       "optim.warmup_iters=10", "optim.layer_decay=1.0", "model.channels=32")
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
    common = ["segment", "train", "--config", "upernet_demo", f"model.checkpoint={pretrained}", "model.channels=16",
              "model.aux_channels=8", "data.img_size=16", "data.scale=[16,16]", "data.crop_size=16",
              "data.num_samples=8", "data.val_samples=5", "data.num_workers=0", "eval.crop_size=16",
              "train.batch_size=2", "train.iterations=2", "train.eval_every=2", "optim.warmup_iters=1",
              f"train.output_dir={out}", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
              "train.precision=fp32"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "deepmim"]
    done = subprocess.run(torchrun + common, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = json.loads((out / "eval.json").read_text())
    done = subprocess.run(torchrun + ["segment", "eval", str(out / "checkpoint-last.pt"), "--out",
                                      str(tmp_path / "two.json")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["segment", "eval", str(out / "checkpoint-last.pt"), "--out", str(tmp_path / "one.json")]) == 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["mIoU"] == two["mIoU"] == pytest.approx(trained["mIoU"]) and one["aAcc"] == two["aAcc"]
    assert one["IoU"] == two["IoU"]
