"""Grey data as grey: model.encoder.in_chans=1 through pre-training (pixel and HOG heads), pictures,
probes, fine-tuning and export; colour statistics still see grey images repeated, as before."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from deepmim.config.loader import ConfigError
from deepmim.config.schema import (
    DataConfig,
    EncoderConfig,
    FeatureConfig,
    OptimConfig,
    PretrainConfig,
    ProbeConfig,
    TrainConfig,
)
from tests.helpers.data import separable_idx
from tests.helpers.models import tiny_model_config


def grey_pretrain_config(out, data_path, **train) -> PretrainConfig:
    """A 1-channel tiny model with a HOG head (block 2) and a pixel head (block 4), on grey IDX data."""
    from deepmim.tasks.pretrain import fill_target_normalisation

    model = tiny_model_config()
    model.encoder.in_chans = 1
    model.heads[0].target = {"name": "hog", "cell_size": 4}
    cfg = PretrainConfig(
        model=model,
        data=DataConfig(name="idx", path=str(data_path), img_size=16, num_workers=0, mean=[0.45], std=[0.3]),
        optim=OptimConfig(base_lr=1e-3, warmup_epochs=1),
        train=TrainConfig(
            **{
                **dict(
                    epochs=2,
                    batch_size=32,
                    output_dir=str(out),
                    log_every_steps=2,
                    progress=False,
                    tensorboard=False,
                    precision="fp32",
                    device="cpu",
                    seed=0,
                ),
                **train,
            }
        ),
    )
    fill_target_normalisation(cfg)
    return cfg


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    from deepmim.tasks.pretrain import run_pretrain

    root = tmp_path_factory.mktemp("grey")
    (root / "data").mkdir()
    data = separable_idx(root / "data")
    out = root / "run"
    run_pretrain(grey_pretrain_config(out, data))
    return data, out


@pytest.mark.slow
def test_grey_pretraining_end_to_end(grey_run):
    data, out = grey_run
    state = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert state["model"]["encoder.patch_embed.proj.weight"].shape == (32, 1, 4, 4)
    assert state["config"]["model"]["heads"][0]["target"]["mean"] == [0.45]  # HOG undoes the grey normalisation
    picture = np.asarray(Image.open(out / "reconstruction.png").convert("RGB"), dtype=np.int16)
    assert picture.std() > 10  # there is a picture
    assert np.array_equal(picture[..., 0], picture[..., 1]) and np.array_equal(picture[..., 1], picture[..., 2])


@pytest.mark.slow
def test_grey_checkpoint_probes_with_its_own_normalisation(grey_run, tmp_path):
    from deepmim.analysis.features import fit_normalisation
    from deepmim.tasks.probe import run_knn

    data, out = grey_run
    probe = ProbeConfig(
        data=DataConfig(name="idx", path=str(data), img_size=16, num_workers=0),  # ImageNet mean
        features=FeatureConfig(cache_dir=None, progress=False, batch_size=64),
    )
    assert fit_normalisation(probe.data, 1, out / "checkpoint-last.pt").mean == [0.45]
    results = run_knn(str(out / "checkpoint-last.pt"), probe)
    assert results[4]["top1"] > 0.5  # 4 brightness classes; chance 0.25
    bare = tmp_path / "bare.pt"
    torch.save({"model": torch.load(out / "checkpoint-last.pt", weights_only=True)["model"]}, bare)
    with pytest.raises(ConfigError, match="takes 1 input channel"):
        fit_normalisation(probe.data, 1, bare)


@pytest.mark.slow
def test_grey_finetune_recipe_and_export(grey_run, tmp_path):
    import timm
    from timm.models.vision_transformer import VisionTransformer

    from deepmim.models.loading import load_encoder
    from deepmim.tasks.export import export_checkpoint
    from deepmim.tasks.finetune import load_finetune_config, run_finetune

    data, out = grey_run
    cfg = load_finetune_config(
        "finetune_fashion_mnist",
        [
            f"model.checkpoint={out / 'checkpoint-last.pt'}",
            f"data.path={data}",
            "data.img_size=16",
            "data.num_workers=0",
            "train.epochs=1",
            "train.batch_size=32",
            f"train.output_dir={tmp_path / 'ft'}",
            "train.progress=false",
            "train.tensorboard=false",
            "train.device=cpu",
            "train.precision=fp32",
        ],
    )
    assert cfg.data.mean == [0.286] and cfg.data.std == [0.353]
    run_finetune(cfg)
    ft = torch.load(tmp_path / "ft" / "checkpoint-last.pt", weights_only=True)
    assert ft["model"]["patch_embed.proj.weight"].shape == (32, 1, 4, 4)

    message = export_checkpoint(str(out / "checkpoint-last.pt"), str(tmp_path / "enc.safetensors"))
    assert "in_chans=1" in message
    vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2, num_classes=0)
    timm.models.load_checkpoint(vit, str(tmp_path / "enc.safetensors"))
    encoder = load_encoder(out / "checkpoint-last.pt").eval()
    images = torch.randn(2, 1, 16, 16)
    assert torch.allclose(vit.eval().forward_features(images), encoder.forward_features(images), atol=1e-5)


def test_finetune_refuses_data_with_other_channels_than_the_encoder(tmp_path):
    from deepmim.tasks.finetune import check_channels

    with pytest.raises(ConfigError, match="1 input channel.*data.mean has 3"):
        check_channels(EncoderConfig(in_chans=1), DataConfig())
    check_channels(EncoderConfig(in_chans=1), dataclasses.replace(DataConfig(), mean=[0.5], std=[0.5]))


@pytest.mark.slow
def test_grey_checkpoint_analysis_pictures_are_grey(grey_run, tmp_path):
    from deepmim.config.schema import AnalysisConfig, AnalyzeConfig
    from deepmim.tasks.analyze import run_analyze

    data, out = grey_run
    cfg = AnalyzeConfig(
        data=DataConfig(name="idx", path=str(data), img_size=16, num_workers=0),  # ImageNet mean
        features=FeatureConfig(cache_dir=None, progress=False, batch_size=64),
        analysis=AnalysisConfig(measures=["attention", "reconstruction"], attention_images=32, reconstruction_images=4),
        output_dir=str(tmp_path / "analysis"),
    )
    result = run_analyze([str(out / "checkpoint-last.pt")], cfg)
    assert len(result["attention"]) == 1 and len(result["reconstruction"]) == 1
    (picture,) = (tmp_path / "analysis").glob("reconstruction-*.png")
    pixels = np.asarray(Image.open(picture).convert("RGB"), dtype=np.int16)
    assert pixels.std() > 10 and np.array_equal(pixels[..., 0], pixels[..., 2])


def test_fashion_mnist_recipes_are_grey_with_the_datasets_own_statistics(tmp_path):
    from deepmim.tasks.finetune import load_finetune_config
    from deepmim.tasks.pretrain import check_compatible, load_pretrain_config
    from deepmim.tasks.study.arms import build_arm
    from deepmim.tasks.study.validate import load_study_config

    pre = load_pretrain_config("deepmim_pixel_fashion_mnist")
    assert pre.model.encoder.in_chans == 1 and (pre.data.mean, pre.data.std) == ([0.286], [0.353])
    check_compatible(pre)
    assert load_finetune_config("finetune_fashion_mnist").data.mean == [0.286]
    for name in ("study_fashion_mnist_cpu", "study_fashion_mnist_gpu"):
        study = load_study_config(name, [f"output_dir={tmp_path / name}"])
        arms = [build_arm(a, study) for a in study.arms]
        assert {a.model_config().encoder.in_chans for a in arms} == {1}, name
        run = arms[0].pretrain_config(0, tmp_path)
        assert run.data.mean == [0.286] and run.data.std == [0.353]
        check_compatible(run)
