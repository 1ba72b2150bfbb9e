"""Exports carry their preprocessing: timm and transformers load what `deepmim export` writes with their own
loaders, prepare images with their own preprocessing (timm's resolve_data_config + create_transform,
transformers' AutoImageProcessor / pipeline) and give the outputs deepmim gives through its own."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from deepmim.checkpoint import make_checkpoint, read_metadata
from deepmim.cli.main import main
from deepmim.data.transforms import build_eval_transform
from deepmim.models.encoder import MaskedViTEncoder
from deepmim.models.export import TIMM_CONFIG, preprocessing_of, timm_folder_config
from deepmim.models.loading import load_encoder
from deepmim.models.presets import list_presets, preset_config
from deepmim.tasks.export import export_checkpoint
from deepmim.tasks.finetune import build_transforms, load_classifier
from tests.helpers.export import MEAN, STD, printed_call, save_finetuned, save_pretrained


def image(h=45, w=38, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("fmt", ["timm", "safetensors"])
def test_timm_loads_the_encoder_with_its_preprocessing_and_gives_deepmims_features(tmp_path, fmt):
    ckpt = save_pretrained(tmp_path / "ck.pt")
    out = tmp_path / ("timm" if fmt == "timm" else "enc.safetensors")
    message = export_checkpoint(str(ckpt), str(out), fmt=fmt)
    call = printed_call(message)
    vit = eval(call, {"timm": timm}).eval()  # the printed call, as printed
    data_cfg = timm.data.resolve_data_config(model=vit)
    assert data_cfg["mean"] == pytest.approx(MEAN) and data_cfg["std"] == pytest.approx(STD)
    assert data_cfg["input_size"] == (3, 32, 32) and data_cfg["crop_pct"] == 1.0
    assert data_cfg["interpolation"] == "bicubic"
    theirs = timm.data.create_transform(**data_cfg)
    encoder = load_encoder(ckpt).eval()
    ours = build_eval_transform(32, MEAN, STD)
    with torch.no_grad():
        same_size = image(32, 32)  # no resize: the two pipelines give the same pixels
        torch.testing.assert_close(theirs(same_size), ours(as_tensor(same_size)), atol=1e-6, rtol=0)
        torch.testing.assert_close(
            vit.forward_features(theirs(same_size)[None]),
            encoder.forward_features(ours(as_tensor(same_size))[None]),
            atol=1e-5,
            rtol=0,
        )
        # resized: PIL's bicubic (timm) against torch's antialiased bicubic (deepmim), a rounding apart
        big = image(45, 38)
        a = vit.forward_features(theirs(big)[None]).flatten()
        b = encoder.forward_features(ours(as_tensor(big))[None]).flatten()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999
        # what the export used to give: timm's default mean/std 0.5
        default = timm.data.create_transform(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bicubic")
        c = vit.forward_features(default(big)[None]).flatten()
        assert torch.nn.functional.cosine_similarity(c, b, dim=0) < 0.999
    if fmt == "timm":
        assert json.loads((out / TIMM_CONFIG).read_text())["deepmim"]["timm_call"] == call
        assert read_metadata(out / "model.safetensors")["timm_call"] == call
    else:
        assert read_metadata(out)["timm_call"] == call


def save_encoder_only(path, preset):
    """A pre-training checkpoint of `preset` with its encoder's weights only (what export reads), cheap to build."""
    cfg = preset_config(preset)
    encoder = MaskedViTEncoder(cfg.encoder)
    state = {f"encoder.{k}": v + 0.02 * torch.randn_like(v) for k, v in encoder.state_dict().items()}
    config = {"model": dataclasses.asdict(cfg), "data": {"mean": MEAN, "std": STD}}
    torch.save(make_checkpoint("pretrain", state, config), path)
    return path


@pytest.mark.slow
def test_every_preset_exports_a_timm_folder_timm_rebuilds(tmp_path):
    """Every preset's encoder: its timm config.json rebuilds the same parameter names and shapes in timm
    (built on the meta device, so ViT-L costs nothing); the micro ones and ViT-Ti/16 are exported whole and
    loaded with the printed call, features equal. Presets share encoders: each distinct one is tested once."""
    encoders = {}
    for name in list_presets():
        encoders.setdefault(json.dumps(dataclasses.asdict(preset_config(name).encoder)), name)
    assert len(encoders) >= 7
    for name in encoders.values():
        enc_cfg = preset_config(name).encoder
        folder = tmp_path / name
        folder.mkdir()
        config = timm_folder_config(enc_cfg, preprocessing_of({}, enc_cfg.img_size, enc_cfg.in_chans), 0)
        (folder / TIMM_CONFIG).write_text(json.dumps(config))
        with torch.device("meta"):
            vit = timm.create_model(f"local-dir:{folder}", pretrained=False)
            ours = MaskedViTEncoder(enc_cfg)
        assert {k: v.shape for k, v in vit.state_dict().items()} == {
            k: v.shape for k, v in ours.state_dict().items()
        }, name
        assert vit.pretrained_cfg["input_size"] == (3, enc_cfg.img_size, enc_cfg.img_size)
        if enc_cfg.embed_dim > 192 or (enc_cfg.embed_dim == 192 and enc_cfg.patch_size == 4):
            continue  # ViT-S and up: shapes above; ViT-Ti at 32px: its 224px twin and the micro ones cover it
        ckpt = save_encoder_only(tmp_path / f"{name}.pt", name)
        message = export_checkpoint(str(ckpt), str(tmp_path / f"{name}-timm"), fmt="timm")
        vit = eval(printed_call(message), {"timm": timm}).eval()
        encoder = load_encoder(ckpt).eval()
        x = torch.randn(1, 3, enc_cfg.img_size, enc_cfg.img_size)
        with torch.no_grad():
            torch.testing.assert_close(vit.forward_features(x), encoder.forward_features(x), atol=1e-5, rtol=0)
        assert timm.data.resolve_data_config(model=vit)["mean"] == pytest.approx(MEAN), name


@pytest.mark.parametrize("fmt", ["timm", "safetensors"])
def test_timm_loads_a_finetuned_classifier_with_its_head_and_evaluation_transform(tmp_path, fmt):
    ckpt = save_finetuned(tmp_path / "ft.pt")
    out = tmp_path / ("timm" if fmt == "timm" else "clf.safetensors")
    message = export_checkpoint(str(ckpt), str(out), fmt=fmt)
    vit = eval(printed_call(message), {"timm": timm}).eval()
    data_cfg = timm.data.resolve_data_config(model=vit)
    assert data_cfg["crop_pct"] == 0.875 and data_cfg["mean"] == pytest.approx(MEAN)
    theirs = timm.data.create_transform(**data_cfg)
    model, cfg = load_classifier(ckpt)
    _, ours = build_transforms(cfg)
    big = image(56, 42)
    with torch.no_grad():
        x_theirs, x_ours = theirs(big)[None], ours(as_tensor(big))[None]
        torch.testing.assert_close(x_theirs, x_ours, atol=0, rtol=0)
        torch.testing.assert_close(vit(x_theirs), model(x_ours), atol=1e-6, rtol=0)
    if fmt == "timm":
        assert vit.pretrained_cfg["label_names"] == ["cat", "dog", "emu"]
        again, _ = load_classifier(out)  # the folder reads back into deepmim (deepmim evaluate takes it)
        assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_transformers_image_processor_and_feature_pipeline_on_the_encoder_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    ckpt = save_pretrained(tmp_path / "ck.pt")
    out = tmp_path / "vit"
    export_checkpoint(str(ckpt), str(out), fmt="hf-encoder")
    processor = transformers.AutoImageProcessor.from_pretrained(str(out))
    encoder = load_encoder(ckpt).eval()
    ours = build_eval_transform(32, MEAN, STD)
    big = image(45, 38)
    pixels = processor(big, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels[0], ours(as_tensor(big)), atol=1e-5, rtol=0)
    vit = transformers.ViTModel.from_pretrained(str(out), add_pooling_layer=False).eval()
    extractor = transformers.pipeline("image-feature-extraction", model=str(out))
    with torch.no_grad():
        expected = encoder.forward_features(ours(as_tensor(big))[None])
        torch.testing.assert_close(vit(pixel_values=pixels).last_hidden_state, expected, atol=1e-4, rtol=0)
    features = torch.tensor(extractor(big))
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=0)


def test_transformers_vitmae_folder_has_its_processor(tmp_path):
    transformers = pytest.importorskip("transformers")
    ckpt = save_pretrained(tmp_path / "ck.pt")
    export_checkpoint(str(ckpt), str(tmp_path / "mae"), fmt="hf")
    processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / "mae"))
    assert processor.image_mean == pytest.approx(MEAN) and processor.crop_size == {"height": 32, "width": 32}


def test_transformers_classifier_pipeline_gives_the_classifiers_scores(tmp_path):
    """The PIL backend of the image processor is timm's evaluation transform to the bit (deepmim's fine-tuning
    evaluates through timm); the default torchvision backend is one uint8 level away at most."""
    transformers = pytest.importorskip("transformers")
    ckpt = save_finetuned(tmp_path / "ft.pt", global_pool="token")
    out = tmp_path / "hf"
    message = export_checkpoint(str(ckpt), str(out), fmt="hf")
    assert "ViTForImageClassification" in message
    model, cfg = load_classifier(ckpt)
    _, ours = build_transforms(cfg)
    big = image(56, 42)  # even crop margins: transformers floors an odd half-margin, torchvision rounds it
    x_ours = ours(as_tensor(big))[None]
    pil = transformers.AutoImageProcessor.from_pretrained(str(out), backend="pil")
    torch.testing.assert_close(pil(big, return_tensors="pt")["pixel_values"], x_ours, atol=1e-6, rtol=0)
    default = transformers.AutoImageProcessor.from_pretrained(str(out))
    pixels = default(big, return_tensors="pt")["pixel_values"]
    assert (pixels - x_ours).abs().max() <= 1.01 / 255 / min(STD)
    hf = transformers.ViTForImageClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x_ours).logits, model(x_ours), atol=1e-5, rtol=0)
        probs = hf(pixel_values=pixels).logits.softmax(-1)[0]
    scores = transformers.pipeline("image-classification", model=str(out))(big, top_k=3)
    assert [s["label"] for s in scores] == [["cat", "dog", "emu"][i] for i in probs.argsort(descending=True)]
    assert [s["score"] for s in scores] == pytest.approx(probs.sort(descending=True).values.tolist(), abs=1e-5)


def test_an_average_pooling_classifier_is_refused_for_transformers_with_the_reason(tmp_path, capsys):
    ckpt = save_finetuned(tmp_path / "ft.pt", global_pool="avg")
    assert main(["export", str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "global_pool='avg'" in err and "--format timm" in err
    assert not (tmp_path / "hf").exists()
