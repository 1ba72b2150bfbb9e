"""Image folders: listed without opening, every mode read as RGB, broken files skipped and counted,
symbolic-link cycles listed once, and flat folders of unlabelled images read at any depth."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from deepmim.cli.main import main
from deepmim.config.schema import DataConfig, PretrainTrainConfig
from deepmim.data import (
    Batch,
    SeededAugmentation,
    TransformedDataset,
    build_dataset,
    build_eval_transform,
    build_pretrain_loader,
    build_pretrain_transform,
    collate_skip_broken,
)
from deepmim.data.errors import DataError
from deepmim.data.folder import ImageFolder, list_images
from deepmim.data.labels import UNLABELLED
from deepmim.tasks.pretrain import run_pretrain
from tests.helpers.data import MEAN, STD, all_images
from tests.helpers.models import save_tiny_pretrained
from tests.helpers.runs import final_weights, tiny_pretrain_config


def _write_image_folder(root):
    """root/train/{cat,dog} with every awkward mode plus two broken files."""
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    cat.mkdir(parents=True)
    dog.mkdir(parents=True)
    Image.new("L", (20, 16), 77).save(cat / "gray.png")
    palette = Image.new("P", (18, 18), 1)
    palette.putpalette([0, 0, 0, 200, 10, 30] + [0] * 762)
    palette.save(cat / "palette.png")
    rgba = Image.new("RGBA", (16, 16), (10, 200, 10, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 16))  # left half fully transparent (and black)
    rgba.save(cat / "rgba.png")
    Image.new("LA", (12, 12), (90, 255)).save(cat / "la.png")
    Image.new("CMYK", (14, 14), (0, 255, 255, 0)).save(cat / "cmyk.jpg")
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(dog / "ok.JPG", quality=95)
    Image.fromarray(noisy).save(dog / "whole.jpg", quality=95)
    data = (dog / "whole.jpg").read_bytes()
    (dog / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (dog / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    (dog / "notes.txt").write_text("not listed")
    (dog / ".hidden.png").write_bytes(b"not listed either")
    return root


@pytest.fixture
def image_root(tmp_path):
    return _write_image_folder(tmp_path / "images")


def test_image_folder_lists_without_opening_and_uses_split_dir(image_root):
    ds = ImageFolder(str(image_root), split="train")
    assert ds.classes == ["cat", "dog"]
    names = [os.path.basename(p) for p, _ in ds.samples]
    assert names == [
        "cmyk.jpg", "gray.png", "la.png", "palette.png", "rgba.png",
        "garbage.png", "ok.JPG", "truncated.jpg", "whole.jpg",
    ]  # fmt: skip
    assert ds.targets == [0] * 5 + [1] * 4
    # Without a <split> folder the root itself is the class root.
    assert ImageFolder(str(image_root / "train"), split="train").classes == ["cat", "dog"]


def test_image_folder_converts_every_mode_to_rgb(image_root):
    ds = ImageFolder(str(image_root))
    by_name = {os.path.basename(p): i for i, (p, _) in enumerate(ds.samples)}
    for name in ["cmyk.jpg", "gray.png", "la.png", "palette.png", "rgba.png", "ok.JPG", "whole.jpg"]:
        image, _ = ds[by_name[name]]
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3, name
    gray = ds[by_name["gray.png"]][0]
    assert gray.shape == (3, 16, 20) and (gray == 77).all()
    assert ds[by_name["palette.png"]][0][:, 0, 0].tolist() == [200, 10, 30]
    rgba = ds[by_name["rgba.png"]][0]
    assert (rgba[:, :, :8] == 255).all(), "transparent pixels must be composited on white"
    assert rgba[:, 0, 12].tolist() == [10, 200, 10]
    assert (ds[by_name["la.png"]][0] == 90).all()
    red = ds[by_name["cmyk.jpg"]][0].float().mean((1, 2))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_broken_images_are_skipped_warned_once_and_counted(image_root, caplog):
    ds = ImageFolder(str(image_root))
    broken = {i for i, (p, _) in enumerate(ds.samples) if os.path.basename(p) in ("garbage.png", "truncated.jpg")}
    with caplog.at_level(logging.WARNING, logger="deepmim.data.folder"):
        for _ in range(2):
            results = [ds[i] for i in range(len(ds))]
    assert {i for i, r in enumerate(results) if r is None} == broken
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and any("truncated.jpg" in m for m in warned) and any("garbage.png" in m for m in warned)

    # training items: an unreadable file is replaced by a deterministic other sample, so the batch stays full
    augmented = SeededAugmentation(ds, build_pretrain_transform(16, MEAN, STD), seed=0)
    batch = collate_skip_broken([augmented[i] for i in range(len(ds))])
    assert isinstance(batch, Batch)
    assert batch.num_skipped >= 2  # the two broken files (and any broken stand-in drawn for them)
    assert batch.images.shape == (len(ds), 3, 16, 16) and batch.images.dtype == torch.float32
    readable = [i for i in range(len(ds)) if i not in broken]
    assert [batch.labels[i].item() for i in readable] == [ds.samples[i][1] for i in readable]
    again = collate_skip_broken([augmented[i] for i in range(len(ds))])
    assert torch.equal(again.images, batch.images) and again.num_skipped == batch.num_skipped
    # evaluation items (no augmentation wrapper): unreadable files are left out
    eval_items = TransformedDataset(ds, build_eval_transform(16, MEAN, STD))
    evaluation = collate_skip_broken([eval_items[i] for i in range(len(ds))])
    assert evaluation.num_skipped == 2 and evaluation.images.shape[0] == len(ds) - 2
    assert evaluation.labels.tolist() == [0] * 5 + [1] * 2

    empty = collate_skip_broken([None, None])
    assert empty.num_skipped == 2 and empty.images.shape[0] == 0 and empty.labels.shape == (0,)


def test_strict_mode_names_the_broken_file(image_root):
    ds = ImageFolder(str(image_root), strict=True)
    index = [os.path.basename(p) for p, _ in ds.samples].index("truncated.jpg")
    with pytest.raises(DataError, match=r"truncated\.jpg.*data\.strict=false"):
        ds[index]


def test_image_folder_loader_counts_skipped_files(image_root):
    cfg = DataConfig(name="imagefolder", path=str(image_root), img_size=16, num_workers=0)
    loader = build_pretrain_loader(cfg, batch_size=3, seed=0, drop_last=False)
    loader.set_epoch(0)
    batches = list(loader)
    assert sum(b.num_skipped for b in batches) >= 2  # both broken files, each replaced by another sample
    assert [len(b.labels) for b in batches] == [3, 3, 3]  # every batch full
    assert all(b.images.shape[1:] == (3, 16, 16) for b in batches)


def test_image_folder_errors_say_what_to_set(tmp_path):
    with pytest.raises(DataError, match=r"'.*nope' does not exist; set data\.path"):
        ImageFolder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolder(str(tmp_path / "empty"))
    (tmp_path / "no_images" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "train" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        ImageFolder(str(tmp_path / "no_images"))


def _image_folder(root):
    from PIL import Image

    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "train" / name / f"{i}.png")
    return root


def test_symlink_cycles_in_a_class_folder_are_listed_once(tmp_path):
    root = _image_folder(tmp_path / "folder")
    os.symlink(".", root / "train" / "a" / "l1")  # two links to the folder itself: os.walk would never end
    os.symlink(".", root / "train" / "a" / "l2")
    os.symlink("../a", root / "train" / "b" / "again")  # another class's folder: its images would count twice
    dataset = ImageFolder(str(root))
    assert len(dataset) == 6 and dataset.targets == [0, 0, 0, 1, 1, 1]
    assert sorted(os.path.relpath(p, root) for p in list_images(str(root / "train"))) == [
        f"train/{c}/{i}.png" for c in "ab" for i in range(3)
    ]


def test_flat_image_folder_is_read_recursively_without_labels(flat_folder):
    cfg = DataConfig(name="images", path=str(flat_folder), img_size=8, num_workers=0)
    dataset = build_dataset(cfg, labels=None)
    assert len(dataset) == 20 and set(dataset.targets) == {UNLABELLED} and dataset.classes == []
    images, labels = all_images(build_pretrain_loader(cfg, batch_size=4, seed=0, labels=None))
    assert images.shape == (20, 3, 8, 8) and labels.tolist() == [UNLABELLED] * 20


def test_pretraining_on_a_flat_folder_runs_and_resumes_exactly(flat_folder, tmp_path):
    def config(out, **train):
        cfg = tiny_pretrain_config(out, epochs=2, batch_size=4, **train)
        cfg.data = DataConfig(name="images", path=str(flat_folder), img_size=16, num_workers=0)
        return cfg

    full = run_pretrain(config(tmp_path / "full"))
    assert full.finished and full.step == 10  # 20 images / 4 x 2 epochs
    run_pretrain(config(tmp_path / "part", max_steps=3))
    run_pretrain(config(tmp_path / "part", resume="auto"))
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_commands_that_need_labels_say_which_and_why(flat_folder, tmp_path, capsys):
    cfg = DataConfig(name="images", path=str(flat_folder), img_size=8, num_workers=0)
    with pytest.raises(DataError, match="without labels, but this command learns or scores image classes"):
        build_dataset(cfg)
    pretrained = save_tiny_pretrained(tmp_path / "pretrained.pt")
    code = main(
        [
            "finetune",
            "--config",
            "finetune_demo",
            f"model.checkpoint={pretrained}",
            "data.name=images",
            f"data.path={flat_folder}",
            "data.img_size=16",
            f"train.output_dir={tmp_path / 'ft'}",
            "train.device=cpu",
            "data.num_workers=0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "deepmim finetune: error:" in err and "fine-tuning" in err and "Traceback" not in err
    # the online probe is the one part of pre-training that needs labels
    probe = tiny_pretrain_config(tmp_path / "probe")
    probe.train = PretrainTrainConfig(**{**vars(probe.train), "online_probe": True})
    probe.data = DataConfig(name="images", path=str(flat_folder), img_size=16, num_workers=0)
    with pytest.raises(DataError, match="train.online_probe=true trains a classifier"):
        run_pretrain(probe)
