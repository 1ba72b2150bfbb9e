"""`deepmim probe-layers`, `knn` and `linprobe` from the CLI: end-to-end runs, clear errors, strict JSON
results, a known answer on raw Fashion-MNIST pixels and the untrained encoder a run started from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from deepmim import create_model
from deepmim.analysis.probes import train_linear_probe
from deepmim.cli.main import main
from deepmim.config.schema import FeatureConfig, LinearProbeConfig
from tests.helpers.data import save_checkpoint_with_data, tiny_data
from tests.helpers.runs import strict_load


def _common(tmp_path):  # tiny_ckpt records no training data: the command is told which
    return [
        f"features.cache_dir={tmp_path / 'cache'}",
        "data.name=embedded",
        "data.img_size=16",
        "data.num_samples=40",
        "features.progress=false",
    ]


def test_cli_probe_layers_end_to_end(tiny_ckpt, tmp_path, capsys):
    other = tmp_path / "b" / "tiny.pt"
    other.parent.mkdir()
    other.write_bytes(tiny_ckpt.read_bytes())
    out = tmp_path / "layers"
    rc = main(
        [
            "probe-layers",
            str(tiny_ckpt),
            str(other),
            "--out",
            str(out),
            "probe.epochs=2",
            "probe.batch_size=16",
            *_common(tmp_path),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "block" in text and "b/tiny.pt" in text
    report = json.loads((out / "layers.json").read_text())
    names = sorted(report["results"])  # colliding file names get their parent folder
    assert len(names) == 2 and "b/tiny.pt" in names and names[1].endswith("/tiny.pt")
    assert all(set(report["results"][n]) == {"1", "2", "3", "4"} for n in names)
    rows = list(csv.DictReader(open(out / "layers.csv")))
    assert len(rows) == 8 and all(0.0 <= float(r["top1"]) <= 1.0 for r in rows)
    assert (out / "layers.png").stat().st_size > 1000
    # --blocks picks a subset
    rc = main(
        ["probe-layers", str(tiny_ckpt), "--blocks", "2,4", "--out", str(out), "probe.epochs=1", *_common(tmp_path)]
    )
    assert rc == 0
    assert set(json.loads((out / "layers.json").read_text())["results"]["tiny.pt"]) == {"2", "4"}
    assert "features.blocks" not in capsys.readouterr().err


def test_cli_knn_end_to_end(tiny_ckpt, tmp_path, capsys):
    rc = main(
        ["knn", str(tiny_ckpt), "knn.k=5", "knn.temperature=0.1", "--out", str(tmp_path / "k"), *_common(tmp_path)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "block 4: top-1" in text and "top-5" in text
    assert json.loads((tmp_path / "k" / "knn.json").read_text())["results"]["4"]["top1"] <= 1.0


def test_cli_clear_errors(tiny_ckpt, tmp_path, capsys):
    rc = main(["knn", str(tiny_ckpt), "num_classes=5", *_common(tmp_path)])
    assert rc == 2 and "class-count mismatch" in capsys.readouterr().err
    rc = main(["probe-layers", str(tmp_path / "missing.pt"), *_common(tmp_path)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["probe-layers", str(tiny_ckpt), "probe.nope=1"])
    assert rc == 2 and "nope" in capsys.readouterr().err


@pytest.mark.parametrize("augment", [True, False])
def test_cli_linprobe_end_to_end(tiny_ckpt, tmp_path, capsys, augment):
    out = tmp_path / "lp"
    rc = main(
        [
            "linprobe",
            str(tiny_ckpt),
            "--out",
            str(out),
            f"augment={str(augment).lower()}",
            "probe.epochs=2",
            "probe.warmup_epochs=1",
            "probe.batch_size=16",
            *_common(tmp_path),
        ]
    )
    assert rc == 0
    assert ("augmented" if augment else "cached features") in capsys.readouterr().out
    report = json.loads((out / "linprobe.json").read_text())
    assert report["block"] == 4 and 0.0 <= report["results"]["top1"] <= 1.0
    state = torch.load(out / "probe-head.pt", weights_only=True)
    assert state["head"]["head.weight"].shape == (10, 32) and "bn.running_mean" in state["head"]
    assert "bn.weight" not in state["head"]  # BatchNorm without affine


def test_linprobe_augmented_is_deterministic(tiny_ckpt, tmp_path):
    from deepmim.config.schema import LinprobeConfig
    from deepmim.tasks.linprobe import run_linprobe

    cfg = LinprobeConfig(
        data=tiny_data(40),
        features=FeatureConfig(cache_dir=None, progress=False),
        probe=LinearProbeConfig(epochs=3, warmup_epochs=1, batch_size=16),
    )
    a = run_linprobe(str(tiny_ckpt), cfg, str(tmp_path / "a"))
    b = run_linprobe(str(tiny_ckpt), cfg, str(tmp_path / "b"))
    assert a["top1"] == b["top1"] and a["train_loss"] == b["train_loss"]


def test_config_less_file_needs_a_preset(tmp_path, capsys):
    """Weights without a deepmim config (MAE / authors' layout: just {'model': state}) probe with
    features.preset=NAME; without it the error says so."""
    model = create_model("mae_vit_micro_p4_32")
    path = tmp_path / "mae.pth"
    torch.save({"model": model.state_dict()}, path)
    common = [
        f"features.cache_dir={tmp_path / 'cache'}",
        "data.name=embedded",
        "data.num_samples=20",
        "features.progress=false",
    ]
    assert main(["knn", str(path), "knn.k=3", *common]) == 2
    assert "preset" in capsys.readouterr().err
    assert main(["knn", str(path), "knn.k=3", "features.preset=mae_vit_micro_p4_32", *common]) == 0
    assert "block 6: top-1" in capsys.readouterr().out


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (apt-get install)")
def test_the_default_linear_probe_reads_raw_fashion_mnist_pixels_as_a_linear_classifier_does():
    """A known answer: a linear classifier on raw Fashion-MNIST pixels scores about 84% (Zalando's benchmark:
    logistic regression 84.2%). The default probe (BN + linear, LARS, 50 epochs) on the first 10k training
    images measured 83.0% on the 10k test images (84.0% with all 60k); far off would mean a broken probe."""
    from deepmim.data import read_idx

    def split(prefix):
        x = torch.from_numpy(read_idx(str(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz"))).float().flatten(1)
        y = torch.from_numpy(read_idx(str(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz"))).long()
        return x / 255, y

    (x, y), (xt, yt) = split("train"), split("t10k")
    result = train_linear_probe(x[:10000], y[:10000], xt, yt, 10, LinearProbeConfig())
    assert 0.81 < result["top1"] < 0.86


def test_probe_layers_vs_random_probes_the_untrained_encoder_the_run_started_from(tiny_ckpt, tmp_path, capsys):
    """--vs-random writes the run's initial encoder (same architecture, same seed: the weights pre-training
    started from) beside the results and prints best block against best block from the recorded numbers."""
    from deepmim.checkpoint import read_checkpoint
    from deepmim.models.encoder import MaskedViTEncoder

    out = tmp_path / "probe"
    assert (
        main(
            [
                "probe-layers",
                str(tiny_ckpt),
                "--vs-random",
                "--out",
                str(out),
                "data.name=embedded",
                "data.num_samples=64",
                "data.img_size=16",
                "probe.epochs=2",
                "probe.batch_size=16",
                "features.cache_dir=",
                "features.progress=false",
            ]
        )
        == 0
    )
    ckpt = read_checkpoint(tiny_ckpt)
    torch.manual_seed(int(ckpt.config.get("train", {}).get("seed", 0)))
    expected = MaskedViTEncoder(ckpt.model_config().encoder).state_dict()
    written = read_checkpoint(out / "random-init.pt").model_state
    assert all(torch.equal(written[f"encoder.{k}"], v) for k, v in expected.items())
    report = json.loads((out / "layers.json").read_text())
    trained, untrained = (report["results"][n] for n in report["checkpoints"])
    best_t, best_r = max(r["top1"] for r in trained.values()), max(r["top1"] for r in untrained.values())
    line = capsys.readouterr().out.strip().splitlines()[-2]
    assert line == report["comparison"]
    assert f"{100 * best_t:.1f}%" in line and f"{100 * best_r:.1f}%" in line
    assert f"{100 * (best_t - best_r):+.1f} points" in line


def test_probe_results_are_strict_json(tmp_path):
    from deepmim.config.schema import DataConfig

    ckpt = save_checkpoint_with_data(
        tmp_path / "pre" / "checkpoint-last.pt", DataConfig(name="embedded", img_size=16, num_samples=20)
    )
    quiet = [f"features.cache_dir={tmp_path / 'cache'}", "features.progress=false"]
    assert main(["knn", str(ckpt), "knn.k=3", "--out", str(tmp_path / "k"), *quiet]) == 0
    assert (
        main(
            [
                "probe-layers",
                str(ckpt),
                "--blocks",
                "4",
                "probe.epochs=1",
                "probe.batch_size=8",
                "--out",
                str(tmp_path / "pl"),
                *quiet,
            ]
        )
        == 0
    )
    for path in (tmp_path / "k" / "knn.json", tmp_path / "pl" / "layers.json"):
        strict_load(Path(path).read_text())
