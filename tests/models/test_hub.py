"""Hub-style persistence (save_pretrained / from_pretrained / push_to_hub through huggingface_hub's mixin),
create_model as timm's (pretrained=PATH, keyword overrides) and the encoder's forward_intermediates against timm's.
Nothing is downloaded or uploaded: the Hub client's network calls are replaced by local stand-ins."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch

from deepmim.checkpoint import CheckpointError
from deepmim.config.loader import ConfigError
from deepmim.models import DeepMIM, create_model
from deepmim.models.classifier import ViTClassifier
from deepmim.models.loading import load_encoder
from deepmim.tasks.export import export_checkpoint
from deepmim.tasks.finetune import load_classifier
from tests.helpers.export import MEAN, STD, printed_call, save_finetuned, save_pretrained

PRESET = "deepmim_pixel_vit_micro_p4_32"


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in sa.items())


def test_deepmim_save_pretrained_and_from_pretrained_round_trip(tmp_path):
    model = create_model(PRESET, mask_ratio=0.6).eval()
    model.save_pretrained(tmp_path / "hub")
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["cfg"]["mask_ratio"] == 0.6 and config["cfg"]["preset"] == PRESET
    again = DeepMIM.from_pretrained(tmp_path / "hub").eval()
    assert again.cfg == model.cfg and same_weights(model, again)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        assert torch.equal(model(images, noise=noise).loss, again(images, noise=noise).loss)
    assert DeepMIM.from_pretrained(tmp_path / "hub", mask_ratio=0.5).cfg.mask_ratio == 0.5
    assert "library_name: deepmim" in (tmp_path / "hub" / "README.md").read_text()


def test_from_pretrained_loads_strictly(tmp_path):
    create_model(PRESET).save_pretrained(tmp_path / "hub")
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    config["cfg"]["encoder"]["depth"] = 5  # the weights hold 6 blocks
    config["cfg"]["heads"] = [{**h, "block": min(h["block"], 5)} for h in config["cfg"]["heads"]][-1:]
    (tmp_path / "hub" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit"):
        DeepMIM.from_pretrained(tmp_path / "hub")


def test_from_pretrained_and_push_to_hub_through_the_hub_client(tmp_path, monkeypatch):
    """A repo id goes through huggingface_hub (download for from_pretrained, create_repo + upload_folder for
    push_to_hub); the stand-ins serve and receive a local folder."""
    import huggingface_hub.hub_mixin as hub_mixin

    import deepmim.models.hub as hub

    remote = tmp_path / "remote"
    calls = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload", repo_id))
        shutil.copytree(folder_path, remote / repo_id)
        return f"https://huggingface.co/{repo_id}"

    def download(repo_id, filename, **kwargs):
        calls.append(("download", repo_id, filename))
        return str(remote / repo_id / filename)

    monkeypatch.setattr(hub_mixin.HfApi, "create_repo", lambda self, repo_id, **kw: type("R", (), {"repo_id": repo_id}))
    monkeypatch.setattr(hub_mixin.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(hub_mixin, "hf_hub_download", download)
    monkeypatch.setattr(hub, "hf_hub_download", download)
    model = create_model(PRESET)
    assert model.push_to_hub("someone/deepmim-micro") == "https://huggingface.co/someone/deepmim-micro"
    assert (remote / "someone/deepmim-micro" / "config.json").is_file()
    again = DeepMIM.from_pretrained("someone/deepmim-micro")
    assert same_weights(model, again)
    assert ("download", "someone/deepmim-micro", "model.safetensors") in calls


def test_finetuned_classifier_saves_and_loads_with_classes_and_preprocessing(tmp_path):
    model, _ = load_classifier(save_finetuned(tmp_path / "ft.pt", global_pool="avg"))
    assert isinstance(model, ViTClassifier)
    model.save_pretrained(tmp_path / "hub")
    again = ViTClassifier.from_pretrained(tmp_path / "hub").eval()
    assert same_weights(model, again) and again.classes == ["cat", "dog", "emu"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    data_cfg = timm.data.resolve_data_config(model=again)  # timm reads the classifier's preprocessing
    assert data_cfg["mean"] == pytest.approx(MEAN) and data_cfg["std"] == pytest.approx(STD)
    assert data_cfg["crop_pct"] == 0.875 and data_cfg["input_size"] == (3, 32, 32)
    # the same weights load into timm's own model as they are
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=3,
        global_pool="avg",
        checkpoint_path=str(tmp_path / "hub" / "model.safetensors"),
    )
    with torch.no_grad():
        assert torch.equal(vit.eval()(x), model(x))


def test_create_model_takes_pretrained_and_overrides_like_timm(tmp_path):
    ckpt = save_pretrained(tmp_path / "ck.pt", preset=PRESET)
    model = create_model(PRESET, pretrained=ckpt, mask_ratio=0.6)
    assert model.cfg.mask_ratio == 0.6
    assert same_weights(model.encoder, load_encoder(ckpt))
    assert create_model(PRESET, img_size=64).encoder.num_patches == 256  # an encoder field, given directly
    assert create_model(PRESET, target={"norm_pix": False}).cfg.target == {"name": "pixel", "norm_pix": False}
    with pytest.raises(ConfigError, match="unknown keyword mask_ratoi"):
        create_model(PRESET, mask_ratoi=0.6)
    with pytest.raises(ConfigError, match="mask_ratio"):
        create_model(PRESET, mask_ratio="lots")
    with pytest.raises(ConfigError, match="downloads no default weights"):
        create_model(PRESET, pretrained=True)


def test_forward_intermediates_equals_timms_on_the_exported_model(tmp_path):
    ckpt = save_pretrained(tmp_path / "ck.pt", preset=PRESET)
    vit = eval(printed_call(export_checkpoint(str(ckpt), str(tmp_path / "timm"), fmt="timm")), {"timm": timm}).eval()
    encoder = load_encoder(ckpt).eval()
    x = torch.randn(2, 3, 32, 32)
    cases = [
        {},
        {"indices": 2, "norm": True},
        {"indices": [0, -1], "return_prefix_tokens": True, "output_fmt": "NLC"},
        {"indices": [1], "stop_early": True, "intermediates_only": True},
        {"output_dict": True, "return_prefix_tokens": True},
    ]
    with torch.no_grad():
        for kwargs in cases:
            torch.testing.assert_close(
                encoder.forward_intermediates(x, **kwargs), vit.forward_intermediates(x, **kwargs), atol=0, rtol=0
            )
        final, maps = encoder.forward_intermediates(x, indices=3)
        assert [m.shape for m in maps] == [(2, 128, 8, 8)] * 3 and final.shape == (2, 65, 128)
