"""Commands that score a checkpoint read the data it was trained on (its recorded config), refuse when
that data is unknown or gone, and say (console and JSON) which dataset, split and how many images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from deepmim.cli.main import main
from deepmim.config.schema import DataConfig
from tests.helpers.data import save_checkpoint_with_data, write_folder


def quiet(tmp_path):
    return [f"features.cache_dir={tmp_path / 'cache'}", "features.progress=false"]


@pytest.fixture
def folder_run(tmp_path):
    folder = write_folder(tmp_path / "photos")
    ckpt = save_checkpoint_with_data(
        tmp_path / "pre" / "checkpoint-last.pt", DataConfig(name="imagefolder", path=str(folder), img_size=16)
    )
    return folder, ckpt


def test_knn_defaults_to_the_folder_the_checkpoint_was_trained_on(folder_run, tmp_path, capsys):
    folder, ckpt = folder_run
    out = tmp_path / "k"
    assert main(["knn", str(ckpt), "knn.k=3", "data.num_samples=256", "--out", str(out), *quiet(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"data: imagefolder {folder} (recorded in {ckpt}); train split 12 images, val split 8 images" in text
    record = json.loads((out / "knn.json").read_text())["data"]
    assert record == {
        "name": "imagefolder",
        "path": str(folder),
        "source": f"recorded in {ckpt}",
        "images": {"train": 12, "val": 8},
    }


def test_probe_layers_and_linprobe_record_the_data_they_scored(folder_run, tmp_path, capsys):
    folder, ckpt = folder_run
    assert (
        main(
            [
                "probe-layers",
                str(ckpt),
                "--out",
                str(tmp_path / "pl"),
                "probe.epochs=1",
                "probe.batch_size=4",
                *quiet(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "pl" / "layers.json").read_text())
    assert report["data"]["name"] == "imagefolder" and report["data"]["images"] == {"train": 12, "val": 8}
    assert (
        main(
            [
                "linprobe",
                str(ckpt),
                "--out",
                str(tmp_path / "lp"),
                "probe.epochs=1",
                "probe.warmup_epochs=0",
                "probe.batch_size=4",
                *quiet(tmp_path),
            ]
        )
        == 0
    )
    assert "data: imagefolder" in capsys.readouterr().out
    report = json.loads((tmp_path / "lp" / "linprobe.json").read_text())
    assert report["data"]["path"] == str(folder) and report["data"]["images"] == {"train": 12, "val": 8}


def test_the_built_in_shapes_only_when_asked(folder_run, tmp_path, capsys):
    folder, ckpt = folder_run
    out = tmp_path / "k"
    assert (
        main(
            [
                "knn",
                str(ckpt),
                "knn.k=3",
                "data.name=embedded",
                "data.num_samples=30",
                "data.img_size=16",
                "--out",
                str(out),
                *quiet(tmp_path),
            ]
        )
        == 0
    )
    record = json.loads((out / "knn.json").read_text())["data"]
    assert record["name"] == "embedded" and record["source"] == "given" and record["images"] == {"train": 30, "val": 30}


def test_a_checkpoint_trained_on_the_shapes_is_scored_on_them(tmp_path, capsys):
    ckpt = save_checkpoint_with_data(
        tmp_path / "demo" / "checkpoint-last.pt", DataConfig(name="embedded", img_size=16, num_samples=24)
    )
    assert main(["knn", str(ckpt), "knn.k=3", *quiet(tmp_path)]) == 0
    assert f"data: embedded (recorded in {ckpt}); train split 24 images, val split 24 images" in capsys.readouterr().out


def test_refuses_a_checkpoint_that_records_no_data(tmp_path, capsys):
    ckpt = save_checkpoint_with_data(tmp_path / "bare.pt", None)
    for command in (["knn"], ["probe-layers"], ["linprobe"], ["analyze"]):
        assert main([*command, str(ckpt), "data.num_samples=20", *quiet(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "records no training data" in err and "data.name=embedded" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


def test_refuses_recorded_data_that_is_not_there(tmp_path, capsys):
    ckpt = save_checkpoint_with_data(
        tmp_path / "pre" / "checkpoint-last.pt",
        DataConfig(name="imagefolder", path=str(tmp_path / "gone"), img_size=16),
    )
    assert main(["knn", str(ckpt), *quiet(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"data.path={tmp_path / 'gone'}, is not there" in err and "data.path=WHERE_IT_IS_NOW" in err
    folder = write_folder(tmp_path / "moved")  # pointed at where it is now, it runs on the recorded settings
    assert main(["knn", str(ckpt), f"data.path={folder}", "knn.k=3", *quiet(tmp_path)]) == 0
    assert f"data: imagefolder {folder} (recorded in {ckpt})" in capsys.readouterr().out


def test_checkpoints_trained_on_different_data_need_a_choice(folder_run, tmp_path, capsys):
    folder, ckpt = folder_run
    other = save_checkpoint_with_data(tmp_path / "other" / "checkpoint-last.pt", DataConfig(name="embedded"))
    assert main(["probe-layers", str(ckpt), str(other), *quiet(tmp_path)]) == 2
    assert "scores every checkpoint on the same data" in capsys.readouterr().err


def test_print_config_shows_the_recorded_data(folder_run, tmp_path, capsys):
    folder, ckpt = folder_run
    assert main(["knn", str(ckpt), "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "name: imagefolder" in text and f"path: {folder}" in text


def save_finetuned(path: Path, data: DataConfig) -> Path:
    """A fine-tuning checkpoint of a tiny timm classifier (random weights) whose config records `data`."""
    from deepmim.config.loader import to_dict
    from deepmim.config.schema import EncoderConfig, FinetuneConfig
    from deepmim.models.classifier import vit_classifier

    enc = EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    model = vit_classifier(enc, 10, 16)
    cfg = FinetuneConfig(data=data)
    cfg.train.device, cfg.train.precision, cfg.data.num_workers = "cpu", "fp32", 0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "task": "finetune",
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "architecture": {"encoder": dataclasses.asdict(enc), "num_classes": 10},
        },
        path,
    )
    return path


def test_evaluate_says_what_it_scored_and_refuses_data_that_is_gone(tmp_path, capsys):
    ckpt = save_finetuned(
        tmp_path / "ft" / "checkpoint-last.pt", DataConfig(name="embedded", img_size=16, num_samples=12)
    )
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"data: embedded (recorded in {ckpt}); val split 12 images" in printed and "images 12" in printed
    record = json.loads(out.read_text())["data"]
    assert record["images"] == {"val": 12} and record["source"] == f"recorded in {ckpt}"
    gone = save_finetuned(
        tmp_path / "ft2" / "checkpoint-last.pt",
        DataConfig(name="imagefolder", path=str(tmp_path / "gone"), img_size=16),
    )
    assert main(["evaluate", str(gone)]) == 2
    assert f"data.path={tmp_path / 'gone'}, is not there" in capsys.readouterr().err
