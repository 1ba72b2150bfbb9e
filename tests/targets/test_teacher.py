"""Teacher targets against their references (open_clip, timm, deepmim) with tiny random-weight files in
the real formats; the authors' cosine loss; a bf16 teacher stored once and close to fp32."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from deepmim import create_model
from deepmim.config.loader import ConfigError, to_dict
from deepmim.config.schema import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig, HeadConfig, ModelConfig
from deepmim.models import CheckpointError, DeepMIM, load_weights
from deepmim.models.export import export_encoder
from deepmim.models.presets import preset_config
from deepmim.targets import build_target
from deepmim.targets.teacher import token_loss
from deepmim.targets.teachers import CLIP_MEAN, CLIP_STD
from tests.helpers.data import normalise
from tests.helpers.models import AuthorsLayoutModel, perturb_, tiny_clip, tiny_model_config


def test_bf16_teacher_is_stored_once_and_its_loss_stays_close(tmp_path):
    pytest.importorskip("open_clip")

    torch.manual_seed(1)
    path = tmp_path / "clip.pt"
    torch.save(tiny_clip(quick_gelu=False).state_dict(), path)
    cfg = tiny_model_config()
    cfg.target = {"name": "teacher", "kind": "open_clip", "path": str(path), "loss": "cosine"}
    model = DeepMIM(cfg)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp32 = model(images, noise=noise).loss.item()
        model.store_frozen_targets_in("bf16")
        teacher = next(iter(model.targets.values())).net
        assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
        assert all(p.dtype == torch.float32 for p in model.parameters())  # the student keeps fp32 weights
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(images, noise=noise).loss.item()
    assert 0 < abs(bf16 - fp32) / fp32 < 2e-2, (fp32, bf16)


def test_cosine_losses_equal_the_authors_definition(tmp_path):
    """Same images, mask and teacher: our per-head losses = the released model's 2 - 2cos."""
    teacher = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=2, num_classes=0
    ).eval()
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    target = {
        "name": "teacher",
        "kind": "timm",
        "path": str(tmp_path / "teacher.pth"),
        "model": "vit_tiny_patch16_224",
        "model_kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 24, "depth": 1, "num_heads": 2},
        "teacher_mean": [0.485, 0.456, 0.406],
        "teacher_std": [0.229, 0.224, 0.225],
    }
    cfg = ModelConfig(
        encoder=EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2),
        heads=[HeadConfig(block=b, decoder_dim=32, decoder_depth=1, decoder_heads=2) for b in (2, 3, 4)],
        target=target,
    )
    ref = AuthorsLayoutModel(taps=(2, 3), out_dim=24).eval()
    model = DeepMIM(cfg).eval()
    load_weights(model, {"model": ref.state_dict()})
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    out = model(images, noise=noise)
    teacher_out = teacher.forward_features(images)[:, 1:]
    for block, pred in zip([2, 3, 4], ref(images, noise)):
        p = pred / pred.norm(dim=2, keepdim=True)
        t = teacher_out / teacher_out.norm(dim=2, keepdim=True)
        loss = ((2 - 2 * (p * t).sum(-1)) * out.mask).sum() / out.mask.sum()
        torch.testing.assert_close(out.losses[block], loss, rtol=1e-5, atol=1e-6)


try:
    import open_clip
except ImportError:
    open_clip = None


needs_open_clip = pytest.mark.skipif(open_clip is None, reason="open_clip_torch is not installed")


def clip_tokens(clip, pixels):
    """open_clip's patch tokens (after ln_post), projected as CLIP projects its pooled token."""
    with torch.no_grad():
        _, tokens = clip.visual(normalise(pixels, CLIP_MEAN, CLIP_STD))
    return tokens @ clip.visual.proj


@pytest.fixture(scope="module")
def quickgelu_clip():
    torch.manual_seed(1)
    return tiny_clip(quick_gelu=True)


@needs_open_clip
@pytest.mark.parametrize("layout", ["full", "wrapped", "bare_visual"])
def test_openai_clip_teacher_equals_open_clip_tokens(tmp_path, quickgelu_clip, layout):
    state = quickgelu_clip.state_dict()
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in state and "token_embedding.weight" in state
    if layout == "wrapped":
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    elif layout == "bare_visual":
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    torch.save(state, tmp_path / "clip.pt")
    target = build_target({"name": "teacher", "kind": "openai_clip", "path": str(tmp_path / "clip.pt")}, 4, 3)
    assert target.dim == 48
    pixels = torch.rand(2, 3, 16, 16)
    ours = target(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD), None)
    assert ours.shape == (2, 16, 48)
    torch.testing.assert_close(ours, clip_tokens(quickgelu_clip, pixels), rtol=1e-4, atol=1e-5)


@needs_open_clip
def test_open_clip_teacher_gelu_and_head_count(tmp_path):
    clip = tiny_clip(quick_gelu=False, head_width=32)  # open_clip's own models: GELU; 4 heads here
    torch.save(clip.state_dict(), tmp_path / "oc.pt")
    pixels = torch.rand(2, 3, 16, 16)
    images = normalise(pixels, IMAGENET_MEAN, IMAGENET_STD)
    spec = {"name": "teacher", "kind": "open_clip", "path": str(tmp_path / "oc.pt"), "num_heads": 4}
    torch.testing.assert_close(build_target(spec, 4, 3)(images, None), clip_tokens(clip, pixels), rtol=1e-4, atol=1e-5)
    wrong_heads = build_target({**spec, "num_heads": None}, 4, 3)(images, None)  # width // 64 = 2 heads
    assert (wrong_heads - clip_tokens(clip, pixels)).abs().max() > 1e-3


@needs_open_clip
def test_teacher_sees_its_own_normalisation_whatever_the_students(tmp_path, quickgelu_clip):
    torch.save(quickgelu_clip.state_dict(), tmp_path / "clip.pt")
    pixels = torch.rand(2, 3, 16, 16)
    base = {"name": "teacher", "kind": "openai_clip", "path": str(tmp_path / "clip.pt")}
    imagenet = build_target(base, 4, 3)
    other = build_target({**base, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, 4, 3)
    direct = imagenet.net(normalise(pixels, CLIP_MEAN, CLIP_STD))  # CLIP-normalised pixels fed directly
    torch.testing.assert_close(
        imagenet(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD), None), direct, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(other(normalise(pixels, [0.5] * 3, [0.25] * 3), None), direct, rtol=1e-4, atol=1e-5)


@needs_open_clip
def test_teacher_input_is_resized_to_match_the_student_grid(tmp_path, quickgelu_clip):
    """Student 32px / patch 8 = 4x4 grid; teacher patch 4 -> it sees a bicubic 16px image."""
    torch.save(quickgelu_clip.state_dict(), tmp_path / "clip.pt")
    target = build_target({"name": "teacher", "kind": "openai_clip", "path": str(tmp_path / "clip.pt")}, 8, 3)
    pixels = torch.rand(2, 3, 32, 32)
    ours = target(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD), None)
    small = F.interpolate(pixels, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(ours, clip_tokens(quickgelu_clip, small), rtol=1e-4, atol=1e-4)


@needs_open_clip
def test_teacher_position_embedding_is_resampled_for_a_larger_grid(tmp_path, quickgelu_clip):
    """Student 16px / patch 2 = 8x8 grid: teacher input 32px, its 4x4 position grid resampled to 8x8."""
    torch.save(quickgelu_clip.state_dict(), tmp_path / "clip.pt")
    target = build_target({"name": "teacher", "kind": "openai_clip", "path": str(tmp_path / "clip.pt")}, 2, 3)
    native = target.net.vit.pos_embed.detach().clone()
    out = target(torch.randn(2, 3, 16, 16), None)
    assert out.shape == (2, 64, 48)
    expected = resample_abs_pos_embed(native, new_size=(8, 8), old_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(target.net.vit.pos_embed, expected)
    assert not any(p.requires_grad for p in target.parameters())


def test_clip_teacher_refuses_other_files_with_a_hint(tmp_path):
    torch.save({"model": {"weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a CLIP image tower.*TorchScript"):
        build_target({"name": "teacher", "kind": "openai_clip", "path": str(tmp_path / "other.pt")}, 4, 3)


TINY_TIMM = {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def save_tiny_timm(path, **kwargs):
    vit = perturb_(
        timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **{**TINY_TIMM, **kwargs}).eval()
    )
    torch.save({"model": vit.state_dict()}, path)  # classifier included: the teacher drops it
    return vit


def test_timm_teacher_equals_forward_features_patch_tokens(tmp_path):
    vit = save_tiny_timm(tmp_path / "vit.pt", reg_tokens=2)
    spec = {
        "name": "teacher",
        "kind": "timm",
        "path": str(tmp_path / "vit.pt"),
        "model": "vit_tiny_patch16_224",
        "model_kwargs": {**TINY_TIMM, "reg_tokens": 2},
        "loss": "mse",
    }
    target = build_target(spec, 4, 3)
    assert target.dim == 32 and vit.num_prefix_tokens == 3
    pixels = torch.rand(2, 3, 32, 32)
    timm_mean, timm_std = vit.pretrained_cfg["mean"], vit.pretrained_cfg["std"]  # the teacher's default
    with torch.no_grad():
        expected = vit.forward_features(normalise(pixels, timm_mean, timm_std))[:, 3:]
    torch.testing.assert_close(
        target(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD), None), expected, rtol=1e-4, atol=1e-5
    )


def test_teacher_without_a_patch_grid_is_refused(tmp_path):
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), tmp_path / "r.pt")
    with pytest.raises(ConfigError, match="not a ViT with a patch embedding"):
        build_target({"name": "teacher", "kind": "timm", "path": str(tmp_path / "r.pt"), "model": "test_resnet"}, 4, 3)


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"kind": "clip", "path": "x.pt"}, "kind must be one of"),
        ({"kind": "timm"}, "set `path`"),
        ({"kind": "timm", "path": "x.pt"}, "needs `model`"),
        ({"kind": "openai_clip", "path": "/nonexistent.pt"}, "does not exist"),
    ],
)
def test_teacher_config_errors(spec, message):
    with pytest.raises((ConfigError, CheckpointError), match=message):
        build_target({"name": "teacher", **spec}, 4, 3)


def test_teacher_loss_must_be_known(tmp_path):
    save_tiny_timm(tmp_path / "vit.pt")
    with pytest.raises(ConfigError, match="loss must be one of"):
        build_target(
            {
                "name": "teacher",
                "kind": "timm",
                "path": str(tmp_path / "vit.pt"),
                "model": "vit_tiny_patch16_224",
                "model_kwargs": TINY_TIMM,
                "loss": "l2",
            },
            4,
            3,
        )


DATA_MEAN, DATA_STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]


def test_deepmim_teacher_equals_encoder_forward_features(tmp_path, tiny_cfg):
    model = perturb_(DeepMIM(tiny_cfg)).eval()
    torch.save(
        {
            "task": "pretrain",
            "model": model.state_dict(),
            "config": {"model": to_dict(tiny_cfg), "data": {"mean": DATA_MEAN, "std": DATA_STD}},
        },
        tmp_path / "last.pt",
    )
    target = build_target({"name": "teacher", "kind": "deepmim", "path": str(tmp_path / "last.pt")}, 4, 3)
    assert target.dim == 32
    pixels = torch.rand(2, 3, 16, 16)
    with torch.no_grad():  # the teacher is fed the way it was trained: its own data mean/std
        expected = model.encoder.forward_features(normalise(pixels, DATA_MEAN, DATA_STD))[:, 1:]
    torch.testing.assert_close(
        target(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD), None), expected, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("layout", ["exported_safetensors", "mae"])
def test_deepmim_teacher_from_encoder_only_files(tmp_path, tiny_cfg, layout):
    model = perturb_(DeepMIM(tiny_cfg)).eval()
    spec = {"name": "teacher", "kind": "deepmim"}
    if layout == "exported_safetensors":  # num_heads comes from the export's metadata
        spec["path"] = str(export_encoder(model, tmp_path / "encoder.safetensors"))
    else:  # MAE's pre-training checkpoint: bare encoder keys next to decoder_* keys
        state = {k[len("encoder.") :]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
        state.update({"mask_token": torch.zeros(1, 1, 8), "decoder_pred.weight": torch.zeros(48, 8)})
        torch.save({"model": state}, tmp_path / "mae.pth")
        spec.update(path=str(tmp_path / "mae.pth"), num_heads=2)
    images = torch.randn(2, 3, 16, 16)  # ImageNet-normalised in and out: no change
    with torch.no_grad():
        expected = model.encoder.forward_features(images)[:, 1:]
    torch.testing.assert_close(build_target(spec, 4, 3)(images, None), expected, rtol=1e-4, atol=1e-4)


def teacher_model(tmp_path):
    save_tiny_timm(tmp_path / "vit.pt")
    cfg = preset_config("deepmim_pixel_vit_micro_p4_32")
    cfg.target = {
        "name": "teacher",
        "kind": "timm",
        "path": str(tmp_path / "vit.pt"),
        "model": "vit_tiny_patch16_224",
        "model_kwargs": TINY_TIMM,
    }
    return create_model(cfg)


def test_teacher_stays_out_of_the_model_and_gets_no_grad(tmp_path):
    model = teacher_model(tmp_path).train()
    (target,) = model.targets.values()
    teacher_params = {id(p) for p in target.parameters()}
    assert teacher_params and not teacher_params & {id(p) for p in model.parameters()}
    assert not any("net." in k or k.startswith("targets") for k in model.state_dict())
    assert all(d.pred.out_features == 32 for d in model.decoders.values())
    assert not target.training and not target.net.vit.training  # train() does not reach the teacher
    out = model(torch.randn(2, 3, 32, 32))
    out.loss.backward()
    assert torch.isfinite(out.loss) and set(out.losses) == {3, 4, 5, 6}
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    assert model.encoder.patch_embed.proj.weight.grad is not None
    model.to(torch.float64)  # targets move with the model
    assert target.net.vit.pos_embed.dtype == torch.float64
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).loss.dtype == torch.float32


def test_teacher_runs_in_the_callers_autocast(tmp_path):
    save_tiny_timm(tmp_path / "vit.pt")
    target = build_target(
        {
            "name": "teacher",
            "kind": "timm",
            "path": str(tmp_path / "vit.pt"),
            "model": "vit_tiny_patch16_224",
            "model_kwargs": TINY_TIMM,
        },
        4,
        3,
    )
    images = torch.randn(1, 3, 32, 32)
    full = target(images, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = target(images, None)
    assert low.dtype == torch.float32 and not low.requires_grad
    assert not torch.equal(low, full)  # bf16 matmuls were used
    torch.testing.assert_close(low, full, rtol=0.1, atol=0.1)


def test_cosine_loss_is_two_minus_two_cos_on_masked_tokens():
    loss = partial(token_loss, "cosine")
    value = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]]])
    all_masked = torch.ones(1, 3)
    assert loss(value * 5, value, all_masked).item() == pytest.approx(0.0, abs=1e-6)  # identical directions
    assert loss(-value, value, all_masked).item() == pytest.approx(4.0)  # opposite
    orthogonal = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [2.0, -2.0]]])
    assert loss(orthogonal, value, all_masked).item() == pytest.approx(2.0)
    mixed = torch.stack([-value[0, 0], value[0, 1], orthogonal[0, 2]])[None]  # 4, 0, 2 per token
    assert loss(mixed, value, torch.tensor([[0.0, 1.0, 1.0]])).item() == pytest.approx(1.0)  # (0 + 2) / 2
    assert loss(mixed, value, torch.tensor([[1.0, 0.0, 0.0]])).item() == pytest.approx(4.0)
    # differences per token: (2, 0), (0, 0), (0, 4)
    assert token_loss("mse", mixed, value, all_masked).item() == pytest.approx((4 / 2 + 0 + 16 / 2) / 3)
    # smooth_l1 (beta 1): |d| = 2 -> 1.5, |d| = 4 -> 3.5, 0 -> 0
    assert token_loss("smooth_l1", mixed, value, all_masked).item() == pytest.approx((1.5 / 2 + 0 + 3.5 / 2) / 3)


def test_one_teacher_forward_per_batch_for_all_heads(tmp_path):
    """Four heads with the same teacher target: one teacher, run once per batch (not once per head)."""
    model = teacher_model(tmp_path)
    (target,) = model.targets.values()
    assert len(model.heads) == 4
    calls = []
    target.net.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(2, 3, 32, 32)).loss.backward()
    assert calls == [1]
