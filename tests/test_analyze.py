"""`deepmim analyze`: attention distance, linear CKA, probes, the report, and its rendering in Chromium."""
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
from scipy.spatial.distance import cdist, pdist

from deepmim import create_model
from deepmim.analysis.attention import (attention_distance, attention_distances, patch_distances, record_attention,
                                        uniform_attention_distance)
from deepmim.analysis.cka import cka_matrix, linear_cka
from deepmim.cli.main import main
from deepmim.config.schema import DataConfig, EncoderConfig, HeadConfig, ModelConfig, OptimConfig, \
    PretrainConfig, TrainConfig
from deepmim.models.encoder import MaskedViTEncoder
from deepmim.tasks.analyze import data_overrides, epoch_checkpoints, load_analyze_config, run_analyze
from tests.conftest import tiny_model_config

CHROMIUM = "/usr/bin/chromium"


def grid_coords(grid: int, patch: int) -> np.ndarray:
    """Patch positions in pixels, row-major, computed independently of the code under test."""
    return np.array([[r * patch, c * patch] for r in range(grid) for c in range(grid)], dtype=float)


# ---- attention distance ---------------------------------------------------------------------------

def test_patch_distances_match_scipy():
    d = patch_distances(5, 16).numpy()
    assert np.allclose(d, cdist(grid_coords(5, 16), grid_coords(5, 16)))
    assert d[0, 4] == 64 and d[0, 6] == pytest.approx(16 * 2 ** 0.5)


def test_attention_on_the_query_itself_is_distance_zero():
    n = 1 + 16
    attn = torch.eye(n).expand(3, 2, n, n)  # (B, H, N, N)
    assert torch.all(attention_distance(attn, 4, 8) == 0)
    # half of every patch query's attention on the cls token, half on itself: still 0 (cls carries no position)
    half = torch.eye(n) * 0.5
    half[:, 0] += 0.5
    assert torch.allclose(attention_distance(half.expand(1, 1, n, n), 4, 8), torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize("grid,patch", [(4, 8), (7, 16), (3, 4)])
def test_uniform_attention_gives_the_mean_pairwise_distance(grid, patch):
    n = 1 + grid * grid
    attn = torch.full((2, 3, n, n), 1.0 / n)  # uniform over all tokens, cls included
    coords = grid_coords(grid, patch)
    # mean over all ordered (query, key) pairs, the query itself included (distance 0)
    expected = pdist(coords).sum() * 2 / (grid * grid) ** 2
    assert torch.allclose(attention_distance(attn, grid, patch), torch.full((3,), expected, dtype=torch.float64))
    assert uniform_attention_distance(grid, patch) == pytest.approx(expected)


def test_hand_built_maps_per_head():
    grid, patch = 4, 10
    L = grid * grid
    coords = grid_coords(grid, patch)
    attn = torch.zeros(2, 3, 1 + L, 1 + L)
    attn[:, 0, 1:, 1:] = torch.eye(L)  # head 0: itself
    attn[:, 1, 1:, 1] = 1.0  # head 1: every query on patch 0 (the top-left corner)
    # head 2: 0.25 on itself, 0.75 on the patch to the right where there is one, else on itself
    for q in range(L):
        right = q + 1 if (q % grid) < grid - 1 else q
        attn[:, 2, 1 + q, 1 + q] += 0.25
        attn[:, 2, 1 + q, 1 + right] += 0.75
    attn[:, :, 0, 0] = 1.0  # the cls query (ignored)
    got = attention_distance(attn, grid, patch)
    expected_1 = np.linalg.norm(coords - coords[0], axis=1).mean()
    expected_2 = 0.75 * patch * (grid - 1) / grid  # the last column has no right neighbour
    assert got[0] == 0
    assert got[1] == pytest.approx(expected_1)
    assert got[2] == pytest.approx(expected_2)
    # the batch is averaged: a second image with uniform head 0 moves head 0 to half the pairwise mean
    attn2 = attn.clone()
    attn2[1, 0] = 1.0 / (1 + L)
    assert attention_distance(attn2, grid, patch)[0] == pytest.approx(pdist(coords).sum() * 2 / L ** 2 / 2)


def test_attention_distance_rejects_wrong_token_count():
    with pytest.raises(ValueError, match="prefix"):
        attention_distance(torch.ones(1, 1, 10, 10) / 10, 4, 8)


def small_encoder(depth=3, heads=2):
    torch.manual_seed(0)
    enc = MaskedViTEncoder(EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=heads))
    with torch.no_grad():  # sharper, head-specific attention than the init's near-uniform maps
        for b in enc.blocks:
            b.attn.qkv.weight.mul_(6)
    return enc.eval()


def test_recorded_maps_are_the_blocks_attention():
    """softmax(q k^T scale) from the hooks, times v and the projection, is exactly what the (fused) block computes."""
    enc = small_encoder()
    images = torch.randn(2, 3, 16, 16)
    outputs = {}
    handles = [enc.blocks[i].attn.register_forward_hook(lambda m, inp, out, i=i: outputs.__setitem__(i, (inp[0], out)))
               for i in range(3)]
    with torch.no_grad(), record_attention(enc) as maps:
        enc(images)
    for h in handles:
        h.remove()
    assert all(not b.attn._forward_pre_hooks for b in enc.blocks)  # the hooks are gone
    for i in range(3):
        x, out = outputs[i]
        attn = enc.blocks[i].attn
        probs = maps[i + 1][0]
        assert probs.shape == (2, 2, 17, 17) and torch.allclose(probs.sum(-1), torch.ones(2, 2, 17))
        v = attn.qkv(x).reshape(2, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)[2]
        manual = attn.proj((probs @ v).transpose(1, 2).reshape(2, 17, 32))
        assert torch.allclose(manual, out, atol=1e-5)


def test_attention_distances_of_an_encoder():
    enc = small_encoder(depth=3, heads=2)
    images = torch.randn(10, 3, 16, 16)
    loader = [(images[:4], None), (images[4:], None)]
    d = attention_distances(enc, loader, torch.device("cpu"), max_images=6)
    assert d.shape == (3, 2)
    assert torch.all(d >= 0) and torch.all(d <= 4 * 3 * 2 ** 0.5)
    with torch.no_grad(), record_attention(enc, blocks=[2]) as maps:
        enc(images[:6])
    assert torch.allclose(d[1].double(), attention_distance(maps[2][0], 4, 4), atol=1e-5)


# ---- linear CKA -------------------------------------------------------------------------------------

def cka_gram(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from centred Gram matrices (HSIC form), independent of the feature-space formula under test."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def test_cka_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 20, generator=g) @ torch.randn(20, 20, generator=g)  # correlated columns
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-10)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    assert linear_cka(x, x.double() @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0, abs=1e-9)  # isotropic scaling (and a shift)
    y = torch.randn(300, 12, generator=g)
    c = linear_cka(x, y)
    assert linear_cka(x.double() @ q * 0.01, y * 40) == pytest.approx(c, abs=1e-9)
    assert c == pytest.approx(cka_gram(x.double().numpy(), y.double().numpy()), abs=1e-9)
    # anisotropic scaling is NOT an invariance: CKA changes
    assert abs(linear_cka(x, x * torch.linspace(0.1, 10, 20)) - 1.0) > 1e-3


def test_cka_of_independent_features_is_small():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3000, 16, generator=g), torch.randn(3000, 16, generator=g)
    assert linear_cka(x, y) < 0.03  # about sqrt(p q) / n = 0.005
    z = x[:, :8] @ torch.randn(8, 8, generator=g)  # shares half of x's dimensions
    assert 0.2 < linear_cka(x, z) < 0.9


def test_cka_matrix_symmetric_with_unit_diagonal():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(200, 8, generator=g)
    feats = {1: base, 2: base + 0.5 * torch.randn(200, 8, generator=g), 3: torch.randn(200, 8, generator=g)}
    m = np.array(cka_matrix(feats, feats))
    assert np.allclose(np.diag(m), 1) and np.allclose(m, m.T)
    assert m[0, 1] > m[0, 2]
    with pytest.raises(ValueError, match="same n"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))


# ---- config, shorthand ------------------------------------------------------------------------------

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


# ---- end to end on tiny runs ------------------------------------------------------------------------

def tiny_run(out: Path, heads) -> Path:
    from deepmim.tasks.pretrain import run_pretrain

    cfg = PretrainConfig(model=tiny_model_config(heads=heads),
                         data=DataConfig(name="embedded", img_size=16, num_samples=64, num_workers=0),
                         optim=OptimConfig(base_lr=1e-3, warmup_epochs=1),
                         train=TrainConfig(epochs=2, batch_size=16, output_dir=str(out), log_every_steps=1,
                                           progress=False, tensorboard=False, plots=False, precision="fp32",
                                           device="cpu", seed=3, save_every_epochs=1))
    run_pretrain(cfg)
    return out / "checkpoint-last.pt"


def probe_args(tmp_path):
    return [f"features.cache_dir={tmp_path / 'cache'}", "data.img_size=16", "features.progress=false",
            "probe.epochs=5", "probe.batch_size=16", "knn.k=5"]


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
    assert {"linear_top1", "knn_top1", "attention_distance_px", "cka", "cka_between", "reconstruction_masked_mse",
            "train_loss_block2", "convergence_linear_top1", "convergence_knn_top1"} <= measures
    assert sum(r["measure"] == "attention_distance_px" for r in rows) == 2 * 4 * 2
    # the report embeds every figure, each a PNG that is also on disk
    html = (out / "report.html").read_text()
    imgs = embedded_images(html)
    files = [f["file"] for f in result["figures"]]
    assert len(imgs) == len(files) >= 11 and "src=\"http" not in html
    for (alt, data), file in zip(imgs, files):
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
        cfg = ModelConfig(encoder=EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=2),
                          heads=[HeadConfig(block=depth, decoder_dim=32, decoder_depth=1, decoder_heads=2)])
        model = create_model(cfg)
        path = tmp_path / f"d{depth}" / "model.pt"
        path.parent.mkdir()
        torch.save({"task": "pretrain", "model": model.state_dict(), "config": {"model": dataclasses.asdict(model.cfg)}},
                   path)
        paths.append(str(path))
    cfg = load_analyze_config(None, ["data.num_samples=20", *common(tmp_path),
                                     "analysis.measures=[attention,cka,reconstruction,loss,convergence]"])
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


# ---- the report in a real browser -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(analyzed, tmp_path):
    from PIL import Image

    _, _, _, out = analyzed
    n_figures = len(json.loads((out / "analysis.json").read_text())["figures"])
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    url = (out / "report.html").resolve().as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    # the page's own check: every <img> complete with a non-zero natural width once loaded
    assert f'data-images="ok {n_figures}"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True,
                   timeout=120, check=True)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1200)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # text, plots: not blank
