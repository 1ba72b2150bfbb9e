"""The HOG target against skimage, and in a model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepmim import create_model
from deepmim.config.loader import ConfigError
from deepmim.config.schema import IMAGENET_MEAN, IMAGENET_STD
from deepmim.models.presets import preset_config
from deepmim.targets import build_target
from deepmim.targets.hog import cell_histograms
from tests.helpers.data import normalise

try:  # test extra: pip install -e .[test]
    import skimage.feature as skimage_feature
except ImportError:
    skimage_feature = None


needs_skimage = pytest.mark.skipif(skimage_feature is None, reason="scikit-image is not installed")


def unnormalise(images, mean, std):
    return images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def skimage_cells(channel: np.ndarray) -> np.ndarray:
    """skimage's HOG of one channel with MaskFeat's settings -> (cells_row, cells_col, 9)."""
    out = skimage_feature.hog(
        channel, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1), block_norm="L2", feature_vector=True
    )
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
    r, c = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
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


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"name": "hog", "cell_size": 6}, "must divide the patch size"),
        ({"name": "hog", "mean": [0.5]}, "one per channel"),
        ({"name": "hog", "bins": 9}, "unknown config key"),
    ],
)
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


def test_hog_target_in_a_model():
    cfg = preset_config("deepmim_pixel_vit_micro_p4_32")
    cfg.target = {"name": "hog", "cell_size": 4}
    model = create_model(cfg)
    out = model(torch.randn(2, 3, 32, 32))
    assert all(d.pred.out_features == 27 for d in model.decoders.values()) and torch.isfinite(out.loss)
