"""The pixel target: patchify in MAE's order and the norm_pix target's inverse."""

import torch

from deepmim.targets import build_target, patchify, unpatchify


def test_norm_pix_target_and_inverse():
    target = build_target({"name": "pixel", "norm_pix": True}, patch_size=4, in_chans=3)
    images = torch.randn(2, 3, 8, 8) * 3 + 1
    t = target(images, None)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(target.to_pixels(t, images), patchify(images, 4), atol=1e-4, rtol=1e-4)
    raw = build_target({"name": "pixel", "norm_pix": False}, patch_size=4, in_chans=3)
    torch.testing.assert_close(raw(images, None), patchify(images, 4))


def test_patchify_roundtrip_and_mae_order():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 48)
    # MAE order: patch (row 0, col 1), pixel (0, 0), then channels
    assert patches[0, 1, :3].tolist() == [images[0, c, 0, 4].item() for c in range(3)]
    assert torch.equal(unpatchify(patches, 4, 3), images)
