"""`deepmim analyze`: the data shorthand, epoch checkpoints, the end-to-end report and its rendering in
Chromium, and its probe numbers equal to those of `probe-layers` and `knn`."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from deepmim import create_model
from deepmim.cli.main import main
from deepmim.config.schema import EncoderConfig, HeadConfig, ModelConfig
from deepmim.tasks.analyze import data_overrides, epoch_checkpoints, load_analyze_config, run_analyze
from tests.helpers.runs import tiny_pretrain_config

CHROMIUM = "/usr/bin/chromium"


def test_data_shorthand(tmp_path):
    assert data_overrides(None) == []
    assert data_overrides("embedded") == ["data.name=embedded"]
    assert data_overrides("embedded:500") == ["data.name=embedded", "data.num_samples=500"]
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "train-images-idx3-ubyte").write_bytes(b"")
    assert data_overrides(str(tmp_path / "idx")) == ["data.name=idx", f"data.path={tmp_path / 'idx'}"]
    (tmp_path / "folder" / "train").mkdir(parents=True)
    assert data_overrides(str(tmp_path / "folder"))[0] == "data.name=imagefolder"
    with pytest.raises(ValueError, match="embedded:N"):
        data_overrides("embedded:x")
    with pytest.raises(FileNotFoundError):
        data_overrides(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown"):
        load_analyze_config(None, ["analysis.measures=[probe,bogus]"])


def test_epoch_checkpoints_named_by_epochs_trained(tmp_path):
    for name in ("checkpoint-epoch0001.pt", "checkpoint-epoch0010.pt", "checkpoint-last.pt", "checkpoint-epochx.pt"):
        (tmp_path / name).write_bytes(b"")
    assert list(epoch_checkpoints(tmp_path)) == [1, 10]


def tiny_run(out: Path, heads) -> Path:
    from deepmim.tasks.pretrain import run_pretrain

    run_pretrain(tiny_pretrain_config(out, heads=heads, save_every_epochs=1))
    return out / "checkpoint-last.pt"


def probe_args(tmp_path):
    return [
        f"features.cache_dir={tmp_path / 'cache'}",
        "data.img_size=16",
        "features.progress=false",
        "probe.epochs=5",
        "probe.batch_size=16",
        "knn.k=5",
    ]


def common(tmp_path):
    return probe_args(tmp_path) + ["analysis.attention_images=8", "analysis.reconstruction_images=3"]


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analyze")
    mae = tiny_run(tmp / "mae", heads=(4,))
    deep = tiny_run(tmp / "deepmim", heads=(2, 4))
    out = tmp / "report"
    rc = main(["analyze", str(mae), str(deep), "--data", "embedded:40", "--out", str(out), *common(tmp)])
    assert rc == 0
    return tmp, mae, deep, out


def embedded_images(html: str):
    return re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', html)


@pytest.mark.slow
def test_analyze_end_to_end(analyzed):
    tmp, mae, deep, out = analyzed
    result = json.loads((out / "analysis.json").read_text())
    names = list(result["checkpoints"])
    assert names == ["mae/checkpoint-last.pt", "deepmim/checkpoint-last.pt"]
    assert result["checkpoints"][names[1]]["supervised_blocks"] == [2, 4]
    for key in ("probe", "knn", "attention", "cka", "reconstruction", "loss", "convergence"):
        assert result[key], key
    for n in names:
        assert set(result["probe"][n]) == set(result["knn"][n]) == {"1", "2", "3", "4"}
        assert np.array(result["attention"][n]["per_head"]).shape == (4, 2)
        assert result["convergence"][n]["linear"].keys() == {"1", "2"}  # two saved epochs
        assert result["convergence"][n]["knn"]["2"].keys() == {"1", "2", "3", "4"}
    assert set(result["reconstruction"][names[1]]["masked_pixel_mse"]) == {"block 2", "block 4"}
    assert set(result["loss"][names[1]]) == {"loss", "loss_block2", "loss_block4"}
    pair = result["cka"]["between"][f"{names[0]} vs {names[1]}"]
    assert set(pair["same_block"]) == {"1", "2", "3", "4"}
    within = np.array(result["cka"]["within"][names[0]]["matrix"])
    assert np.allclose(np.diag(within), 1)
    assert result["notes"] == []
    # every number is in the CSV
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    measures = {r["measure"] for r in rows}
    assert {
        "linear_top1",
        "knn_top1",
        "attention_distance_px",
        "cka",
        "cka_between",
        "reconstruction_masked_mse",
        "train_loss_block2",
        "convergence_linear_top1",
        "convergence_knn_top1",
    } <= measures
    assert sum(r["measure"] == "attention_distance_px" for r in rows) == 2 * 4 * 2
    # the report embeds every figure, each a PNG that is also on disk
    html = (out / "report.html").read_text()
    imgs = embedded_images(html)
    files = [f["file"] for f in result["figures"]]
    assert len(imgs) == len(files) >= 11 and 'src="http' not in html
    for (_alt, data), file in zip(imgs, files):
        raw = base64.b64decode(data)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw == (out / file).read_bytes()
    for section in ("probe", "attention", "cka", "reconstruction", "loss", "convergence"):
        assert f'id="{section}"' in html


@pytest.mark.slow
def test_analyze_probe_numbers_equal_probe_layers_and_knn(analyzed, capsys):
    tmp, mae, deep, out = analyzed
    result = json.loads((out / "analysis.json").read_text())
    args = ["data.num_samples=40", *probe_args(tmp)]
    assert main(["probe-layers", str(mae), str(deep), "--out", str(tmp / "pl"), *args]) == 0
    layers = json.loads((tmp / "pl" / "layers.json").read_text())["results"]
    assert layers == result["probe"]
    assert main(["knn", str(deep), "--blocks", "1,2,3,4", "--out", str(tmp / "k"), *args]) == 0
    assert json.loads((tmp / "k" / "knn.json").read_text())["results"] == result["knn"]["deepmim/checkpoint-last.pt"]


def test_different_depths_side_by_side(tmp_path, capsys):
    paths = []
    for depth in (4, 3):
        cfg = ModelConfig(
            encoder=EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=2),
            heads=[HeadConfig(block=depth, decoder_dim=32, decoder_depth=1, decoder_heads=2)],
        )
        model = create_model(cfg)
        path = tmp_path / f"d{depth}" / "model.pt"
        path.parent.mkdir()
        torch.save(
            {"task": "pretrain", "model": model.state_dict(), "config": {"model": dataclasses.asdict(model.cfg)}}, path
        )
        paths.append(str(path))
    cfg = load_analyze_config(
        None,
        ["data.num_samples=20", *common(tmp_path), "analysis.measures=[attention,cka,reconstruction,loss,convergence]"],
    )
    result = run_analyze(paths, cfg, str(tmp_path / "out"))
    assert [len(a["per_head"]) for a in result["attention"].values()] == [4, 3]
    pair = result["cka"]["between"]["d4/model.pt vs d3/model.pt"]
    assert "same_block" not in pair and np.array(pair["matrix"]).shape == (4, 3)
    notes = " ".join(result["notes"])
    assert "depths 4 and 3" in notes and "no metrics.jsonl" in notes and "save_every_epochs" in notes
    html = (tmp_path / "out" / "report.html").read_text()
    assert "depths 4 and 3" in html and len(embedded_images(html)) == len(result["figures"]) == 6


def test_cli_analyze_errors(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing.pt"), "--data", "embedded"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["analyze", "--data", "embedded:12", "--print-config"]) == 0
    assert "num_samples: 12" in capsys.readouterr().out
    assert main(["analyze", "x.pt", "--data", "embedded:7", "--print-config", "probe.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 7" in out and "epochs: 3" in out
    assert main(["analyze", "x.pt", "analysis.nope=1"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(analyzed, tmp_path):
    from PIL import Image

    _, _, _, out = analyzed
    n_figures = len(json.loads((out / "analysis.json").read_text())["figures"])
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    url = (out / "report.html").resolve().as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    # the page's own check: every <img> complete with a non-zero natural width once loaded
    assert f'data-images="ok {n_figures}"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        flags + [f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True, timeout=120, check=True
    )
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1200)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # text, plots: not blank
