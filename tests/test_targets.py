"""HOG, teacher and hybrid targets against their references (skimage, open_clip, timm, deepmim),
with tiny random-weight checkpoints written in the real formats."""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from deepmim import create_model
from deepmim.config.loader import ConfigError, to_dict
from deepmim.config.schema import IMAGENET_MEAN, IMAGENET_STD
from deepmim.models import CheckpointError, DeepMIM
from deepmim.models.export import export_encoder
from deepmim.models.presets import preset_config
from deepmim.targets import build_target
from deepmim.targets.hog import cell_histograms
from deepmim.targets.teacher import token_loss
from deepmim.targets.teachers import CLIP_MEAN, CLIP_STD
from tests.conftest import tiny_model_config

try:  # test extra: pip install -e .[test]
    import skimage.feature as skimage_feature
except ImportError:
    skimage_feature = None
try:
    import open_clip
except ImportError:
    open_clip = None
needs_skimage = pytest.mark.skipif(skimage_feature is None, reason="scikit-image is not installed")
needs_open_clip = pytest.mark.skipif(open_clip is None, reason="open_clip_torch is not installed")


def normalise(pixels, mean, std):
    return (pixels - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def unnormalise(images, mean, std):
    return images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def perturb_(module, scale=0.05):
    """Random-init models have unit norms and zero biases: perturb so a mis-mapped weight shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


# =================================================================== HOG

def skimage_cells(channel: np.ndarray) -> np.ndarray:
    """skimage's HOG of one channel with MaskFeat's settings -> (cells_row, cells_col, 9)."""
    out = skimage_feature.hog(channel, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
                              block_norm="L2", feature_vector=True)
    return out.reshape(channel.shape[0] // 8, channel.shape[1] // 8, 9)


@needs_skimage
def test_hog_matches_skimage_per_channel_over_the_whole_image():
    pixels = torch.rand(2, 3, 32, 32)
    images = normalise(pixels, IMAGENET_MEAN, IMAGENET_STD)
    target = build_target({"name": "hog"}, patch_size=16, in_chans=3)
    assert target.dim == 2 * 2 * 3 * 9
    ours = target(images, None)
    assert ours.shape == (2, 4, 108)
    seen = unnormalise(images, IMAGENET_MEAN, IMAGENET_STD).double().numpy()  # what the target un-does to
    ref = np.stack([np.stack([skimage_cells(seen[n, c]) for c in range(3)], axis=2) for n in range(2)])
    # (n, cells_r, cells_c, c, bins) -> per 16px patch: (cell row, cell col, channel, bin)
    ref = ref.reshape(2, 2, 2, 2, 2, 3, 9).transpose(0, 1, 3, 2, 4, 5, 6).reshape(2, 4, 108)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-6, rtol=0)


@needs_skimage
def test_hog_single_patch_equals_skimage_on_that_patch():
    pixels = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    target = build_target({"name": "hog", "mean": [0.0] * 3, "std": [1.0] * 3}, patch_size=16, in_chans=3)
    ours = target(pixels, None).reshape(2, 2, 3, 9)
    for c in range(3):
        np.testing.assert_allclose(ours[:, :, c].numpy(), skimage_cells(pixels[0, c].numpy()), atol=1e-6, rtol=0)


def ramp(angle_deg: float, size: int = 24) -> torch.Tensor:
    """Pixels whose gradient (d_row, d_col) points at `angle_deg` away from the border (cell 1, 1)."""
    r, c = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    a = math.radians(angle_deg)
    return (r * math.sin(a) + c * math.cos(a)).view(1, 1, size, size)


def test_hog_hard_bins_like_skimage_and_optional_linear_interpolation():
    # 30 deg is the centre of bin 1: both ways put everything there.
    for interpolate in (False, True):
        hist = cell_histograms(ramp(30), interpolate=interpolate)[0, 0, 1, 1]
        assert hist.argmax() == 1 and hist.sum() == pytest.approx(hist[1].item())
    # 5 deg: hard -> bin 0; linear -> 3/4 to bin 0 (centre 10), 1/4 wraps to bin 8 (centre 170).
    hard = cell_histograms(ramp(5))[0, 0, 1, 1]
    soft = cell_histograms(ramp(5), interpolate=True)[0, 0, 1, 1]
    assert hard[0] == pytest.approx(hard.sum().item())
    torch.testing.assert_close(soft[[0, 8]] / soft.sum(), torch.tensor([0.75, 0.25], dtype=torch.float64))
    # The interpolated histogram keeps every vote (same mass per cell).
    images = torch.rand(2, 3, 16, 24)
    torch.testing.assert_close(cell_histograms(images, interpolate=True).sum(-1), cell_histograms(images).sum(-1))


@pytest.mark.parametrize("spec,message", [
    ({"name": "hog", "cell_size": 6}, "must divide the patch size"),
    ({"name": "hog", "mean": [0.5]}, "one per channel"),
    ({"name": "hog", "bins": 9}, "unknown config key"),
])
def test_hog_config_is_validated(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_target(spec, patch_size=16, in_chans=3)


def test_hog_ignores_autocast_and_masks_the_loss():
    target = build_target({"name": "hog", "cell_size": 4}, patch_size=8, in_chans=3)
    images = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = target(images, None)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, target(images, None), rtol=0, atol=0)
    pred, value = torch.zeros(1, 2, 3), torch.tensor([[[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]]])
    assert target.loss(pred, value, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(9.0)


# =================================================================== teacher: CLIP

def tiny_clip(quick_gelu=True, head_width=64):
    """A CLIP with a 2-block, 128-wide ViT image tower on 16px images, patch 4 (4x4 grid)."""
    vision = open_clip.model.CLIPVisionCfg(layers=2, width=128, head_width=head_width, patch_size=4, image_size=16,
                                           output_tokens=True)
    text = open_clip.model.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return perturb_(open_clip.model.CLIP(embed_dim=48, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval())


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
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
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
    torch.testing.assert_close(build_target(spec, 4, 3)(images, None), clip_tokens(clip, pixels),
                               rtol=1e-4, atol=1e-5)
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
    torch.testing.assert_close(imagenet(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD), None), direct,
                               rtol=1e-4, atol=1e-5)
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


# =================================================================== teacher: timm, deepmim

TINY_TIMM = {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def save_tiny_timm(path, **kwargs):
    vit = perturb_(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                                     **{**TINY_TIMM, **kwargs}).eval())
    torch.save({"model": vit.state_dict()}, path)  # classifier included: the teacher drops it
    return vit


def test_timm_teacher_equals_forward_features_patch_tokens(tmp_path):
    vit = save_tiny_timm(tmp_path / "vit.pt", reg_tokens=2)
    spec = {"name": "teacher", "kind": "timm", "path": str(tmp_path / "vit.pt"), "model": "vit_tiny_patch16_224",
            "model_kwargs": {**TINY_TIMM, "reg_tokens": 2}, "loss": "mse"}
    target = build_target(spec, 4, 3)
    assert target.dim == 32 and vit.num_prefix_tokens == 3
    pixels = torch.rand(2, 3, 32, 32)
    timm_mean, timm_std = vit.pretrained_cfg["mean"], vit.pretrained_cfg["std"]  # the teacher's default
    with torch.no_grad():
        expected = vit.forward_features(normalise(pixels, timm_mean, timm_std))[:, 3:]
    torch.testing.assert_close(target(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD), None), expected,
                               rtol=1e-4, atol=1e-5)


def test_teacher_without_a_patch_grid_is_refused(tmp_path):
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), tmp_path / "r.pt")
    with pytest.raises(ConfigError, match="not a ViT with a patch embedding"):
        build_target({"name": "teacher", "kind": "timm", "path": str(tmp_path / "r.pt"), "model": "test_resnet"}, 4, 3)


@pytest.mark.parametrize("spec,message", [
    ({"kind": "clip", "path": "x.pt"}, "kind must be one of"),
    ({"kind": "timm"}, "set `path`"),
    ({"kind": "timm", "path": "x.pt"}, "needs `model`"),
    ({"kind": "openai_clip", "path": "/nonexistent.pt"}, "does not exist"),
])
def test_teacher_config_errors(spec, message):
    with pytest.raises((ConfigError, CheckpointError), match=message):
        build_target({"name": "teacher", **spec}, 4, 3)


def test_teacher_loss_must_be_known(tmp_path):
    save_tiny_timm(tmp_path / "vit.pt")
    with pytest.raises(ConfigError, match="loss must be one of"):
        build_target({"name": "teacher", "kind": "timm", "path": str(tmp_path / "vit.pt"),
                      "model": "vit_tiny_patch16_224", "model_kwargs": TINY_TIMM, "loss": "l2"}, 4, 3)


DATA_MEAN, DATA_STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]


def test_deepmim_teacher_equals_encoder_forward_features(tmp_path, tiny_cfg):
    model = perturb_(DeepMIM(tiny_cfg)).eval()
    torch.save({"task": "pretrain", "model": model.state_dict(),
                "config": {"model": to_dict(tiny_cfg), "data": {"mean": DATA_MEAN, "std": DATA_STD}}},
               tmp_path / "last.pt")
    target = build_target({"name": "teacher", "kind": "deepmim", "path": str(tmp_path / "last.pt")}, 4, 3)
    assert target.dim == 32
    pixels = torch.rand(2, 3, 16, 16)
    with torch.no_grad():  # the teacher is fed the way it was trained: its own data mean/std
        expected = model.encoder.forward_features(normalise(pixels, DATA_MEAN, DATA_STD))[:, 1:]
    torch.testing.assert_close(target(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD), None), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["exported_safetensors", "mae"])
def test_deepmim_teacher_from_encoder_only_files(tmp_path, tiny_cfg, layout):
    model = perturb_(DeepMIM(tiny_cfg)).eval()
    spec = {"name": "teacher", "kind": "deepmim"}
    if layout == "exported_safetensors":  # num_heads comes from the export's metadata
        spec["path"] = str(export_encoder(model, tmp_path / "encoder.safetensors"))
    else:  # MAE's pre-training checkpoint: bare encoder keys next to decoder_* keys
        state = {k[len("encoder."):]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
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
    cfg.target = {"name": "teacher", "kind": "timm", "path": str(tmp_path / "vit.pt"),
                  "model": "vit_tiny_patch16_224", "model_kwargs": TINY_TIMM}
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
    target = build_target({"name": "teacher", "kind": "timm", "path": str(tmp_path / "vit.pt"),
                           "model": "vit_tiny_patch16_224", "model_kwargs": TINY_TIMM}, 4, 3)
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


# =================================================================== hybrid

@pytest.fixture
def frozen_path(tmp_path):
    """A 'pre-trained' tiny deepmim (16px, patch 4, heads on blocks 2 and 4) saved like the trainer."""
    torch.manual_seed(7)
    cfg = tiny_model_config()
    frozen = perturb_(DeepMIM(cfg)).eval()
    path = tmp_path / "frozen.pt"
    torch.save({"task": "pretrain", "model": frozen.state_dict(), "config": {"model": to_dict(cfg)}, "step": 10}, path)
    return path, frozen


def student_masking(noise):
    student = DeepMIM(tiny_model_config())
    _, masking = student.encoder(torch.zeros(noise.shape[0], 3, 16, 16), 0.75, noise)
    return masking


def test_hybrid_alpha_one_is_the_pixel_target(frozen_path):
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    masking = student_masking(noise)
    hybrid = build_target({"name": "hybrid", "path": str(frozen_path[0]), "alpha": 1.0}, 4, 3)
    pixel = build_target({"name": "pixel", "norm_pix": True}, 4, 3)
    torch.testing.assert_close(hybrid(images, masking), pixel(images, masking), rtol=0, atol=0)


def test_hybrid_alpha_zero_is_the_frozen_reconstruction_under_the_students_mask(frozen_path):
    path, frozen = frozen_path
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    masking = student_masking(noise)
    with torch.no_grad():
        reference = frozen(images, noise=noise)  # the frozen model's own forward with the student's noise
    torch.testing.assert_close(reference.mask, masking.mask)
    hybrid = build_target({"name": "hybrid", "path": str(path), "alpha": 0.0}, 4, 3)
    torch.testing.assert_close(hybrid(images, masking), reference.preds[4], rtol=1e-5, atol=1e-6)
    third = build_target({"name": "hybrid", "path": str(path), "alpha": 1 / 3}, 4, 3)
    pixels = build_target({"name": "pixel"}, 4, 3)(images, masking)
    torch.testing.assert_close(third(images, masking), pixels / 3 + reference.preds[4] * 2 / 3,
                               rtol=1e-5, atol=1e-6)
    other = student_masking(torch.rand(2, 16))  # another mask, another reconstruction
    assert (hybrid(images, other) - reference.preds[4]).abs().max() > 1e-3


def test_hybrid_heads_share_one_frozen_model_and_one_forward(frozen_path):
    path, frozen = frozen_path
    spec = {"name": "hybrid", "path": str(path)}
    cfg = tiny_model_config(heads=(1, 2, 3, 4))
    for head, alpha in zip(cfg.heads[:3], (0.0, 1 / 3, 2 / 3)):  # the paper's schedule; last head raw pixels
        head.target = {**spec, "alpha": alpha}
    student = DeepMIM(cfg)
    hybrids = [student.target_of(b) for b in (1, 2, 3)]
    assert hybrids[0].frozen is hybrids[1].frozen is hybrids[2].frozen
    assert not any(k.startswith("targets") or "frozen" in k for k in student.state_dict())
    calls = []
    hybrids[0].frozen.model.decoders["4"].register_forward_hook(lambda *a: calls.append(1))
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    out = student(images, noise=noise)
    out.loss.backward()
    assert len(calls) == 1 and torch.isfinite(out.loss)
    with torch.no_grad():
        expected = frozen(images, noise=noise).preds[4]
    torch.testing.assert_close(hybrids[0](images, out.masking), expected, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for t in hybrids for p in t.parameters())
    assert not hybrids[0].frozen.training and not student.target_of(1).frozen.model.training


def test_hybrid_refuses_mismatched_frozen_models(frozen_path, tmp_path):
    path, frozen = frozen_path
    with pytest.raises(ConfigError, match="must be"):
        build_target({"name": "hybrid", "path": str(path), "norm_pix": False}, 4, 3)
    with pytest.raises(ConfigError, match="patch"):
        build_target({"name": "hybrid", "path": str(path)}, 8, 3)
    with pytest.raises(ConfigError, match="alpha"):
        build_target({"name": "hybrid", "path": str(path), "alpha": 1.5}, 4, 3)
    cfg = dataclasses.replace(tiny_model_config(), target={"name": "hog", "cell_size": 4})
    torch.save({"task": "pretrain", "model": DeepMIM(cfg).state_dict(), "config": {"model": to_dict(cfg)}},
               tmp_path / "hog.pt")
    with pytest.raises(ConfigError, match="not pixels"):
        build_target({"name": "hybrid", "path": str(tmp_path / "hog.pt")}, 4, 3)
    torch.save({"model": frozen.state_dict()}, tmp_path / "noconfig.pt")
    with pytest.raises(CheckpointError, match="no deepmim config.*preset"):
        build_target({"name": "hybrid", "path": str(tmp_path / "noconfig.pt")}, 4, 3)


def test_hog_target_in_a_model():
    cfg = preset_config("deepmim_pixel_vit_micro_p4_32")
    cfg.target = {"name": "hog", "cell_size": 4}
    model = create_model(cfg)
    out = model(torch.randn(2, 3, 32, 32))
    assert all(d.pred.out_features == 27 for d in model.decoders.values()) and torch.isfinite(out.loss)


def test_hybrid_reads_a_config_less_mae_checkpoint_with_a_preset(tmp_path):
    """MAE's released *_full.pth layout (decoder_embed, decoder_blocks, ...) plus `preset` naming the model."""
    mae = perturb_(create_model("mae_vit_micro_p4_32")).eval()
    parts = {"embed": "decoder_embed", "blocks": "decoder_blocks", "norm": "decoder_norm", "pred": "decoder_pred",
             "mask_token": "mask_token", "pos_embed": "decoder_pos_embed"}
    state = {}
    for key, value in mae.state_dict().items():
        if key.startswith("encoder."):
            state[key[len("encoder."):]] = value
        else:  # decoders.6.<part>...
            part, _, rest = key[len("decoders.6."):].partition(".")
            state[parts[part] + ("." + rest if rest else "")] = value
    torch.save({"model": state}, tmp_path / "mae_full.pth")
    hybrid = build_target({"name": "hybrid", "path": str(tmp_path / "mae_full.pth"), "preset": "mae_vit_micro_p4_32"},
                          4, 3)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        reference = mae(images, noise=noise)
    torch.testing.assert_close(hybrid(images, reference.masking), reference.preds[6], rtol=1e-5, atol=1e-5)


def test_one_teacher_forward_per_batch_for_all_heads(tmp_path):
    """Four heads with the same teacher target: one teacher, run once per batch (not once per head)."""
    model = teacher_model(tmp_path)
    (target,) = model.targets.values()
    assert len(model.heads) == 4
    calls = []
    target.net.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(2, 3, 32, 32)).loss.backward()
    assert calls == [1]
