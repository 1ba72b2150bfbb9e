"""Transforms: pretraining crops and normalisation, seeded augmentation, grey and colour channels, and
the file-decoding crop path (JPEG draft mode, turbo decoder) equal or close to the tensor path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from deepmim.data import (
    EmbeddedShapes,
    ImageFolder,
    NormalizeUint8,
    PretrainTransform,
    SeededAugmentation,
    build_eval_transform,
    build_pretrain_transform,
    denormalize,
    load_rgb,
    sample_crop_box,
)
from deepmim.data import (
    transforms as transforms_module,
)
from deepmim.data.transforms import colour_jpeg_size, decode_colour_jpeg, draft_factor, match_channels, scale_box
from tests.helpers.data import MEAN, STD


def test_pretrain_transform_output_and_normalisation():
    image = EmbeddedShapes(1, 32)[0][0]
    out = build_pretrain_transform(24, MEAN, STD)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])(image)
    normalized = NormalizeUint8(MEAN, STD)(image)
    assert torch.allclose(normalized, reference, atol=1e-5)
    assert torch.allclose(denormalize(normalized, MEAN, STD), image.float() / 255, atol=1e-5)
    evaluated = build_eval_transform(32, MEAN, STD)(torch.zeros(3, 40, 60, dtype=torch.uint8))
    assert evaluated.shape == (3, 32, 32)


def test_crop_boxes_follow_random_resized_crop():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = sample_crop_box(40, 60, (0.2, 1.0), (3 / 4, 4 / 3), rng.random(40).tolist())
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.17 <= h * w / 2400 <= 1.0 and 0.7 <= w / h <= 1.4
    # No try fits (all areas too big): torchvision's central fallback.
    assert sample_crop_box(10, 100, (1.0, 1.0), (3 / 4, 4 / 3), [0.0] * 40) == (0, 43, 10, 13)


def test_grey_images_meet_colour_statistics_repeated_and_colour_images_grey_ones_as_luma():
    grey = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    old = NormalizeUint8(mean, std)(grey.repeat(3, 1, 1))  # what IDX data gave before: replicated channels
    assert torch.equal(NormalizeUint8(mean, std)(grey), old)
    rgb = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    pil_luma = np.asarray(Image.fromarray(rgb.permute(1, 2, 0).numpy()).convert("L"), dtype=np.float32)
    assert (match_channels(rgb, 1)[0] - torch.from_numpy(pil_luma)).abs().max() <= 0.5  # PIL rounds
    out = NormalizeUint8([0.5], [0.25])(rgb)
    assert out.shape == (1, 8, 8)
    assert torch.allclose(out, (match_channels(rgb, 1) / 255 - 0.5) / 0.25, atol=1e-6)
    assert build_eval_transform(16, [0.286], [0.353])(grey).shape == (1, 16, 16)


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus noise: compresses like a photograph, not like flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    channels = [128 + 90 * np.sin(x / (23.0 + 7 * c) + c) * np.cos(y / (17.0 + 5 * c) - c) for c in range(3)]
    return np.clip(np.stack(channels, -1) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    for i in range(6):
        folder = root / f"class{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(_photo(150, 200, i)).save(folder / f"{i}.jpg", quality=90)
    return root


def test_scale_box_moves_the_crop_onto_the_reduced_image():
    assert scale_box((10, 20, 30, 40), (100, 200), (100, 200)) == (10, 20, 30, 40)  # not reduced
    assert scale_box((10, 20, 30, 40), (100, 200), (50, 100)) == (5, 10, 15, 20)
    assert scale_box((0, 0, 375, 500), (375, 500), (47, 63)) == (0, 0, 47, 63)  # 1/8 rounds up: whole image
    top, left, h, w = scale_box((370, 495, 5, 5), (375, 500), (47, 63))
    assert top + h <= 47 and left + w <= 63 and h >= 1 and w >= 1  # never outside, never empty


def test_draft_factor_keeps_at_least_the_output_resolution():
    assert draft_factor(100, 100, [64, 64]) == 1
    assert draft_factor(130, 300, [64, 64]) == 2
    assert draft_factor(300, 300, [32, 32]) == 8
    for h, w in [(63, 500), (256, 256), (1000, 129)]:
        f = draft_factor(h, w, [64, 64])
        assert h / f >= min(h, 64) and w / f >= min(w, 64)  # never below the output (nor the crop)


@pytest.mark.parametrize("img_size, reduced", [(96, False), (24, True)])
def test_file_crop_path_matches_the_tensor_path(jpeg_folder, turbo_decoder, img_size, reduced):
    """Same seed -> same crop box and flip; identical pixels without reduced decoding, close with it
    (simplejpeg's DCT-scaled decode, or PIL's draft mode where simplejpeg is missing)."""
    transform = PretrainTransform(img_size, MEAN, STD, crop_scale_min=0.5)
    paths = sorted(str(p) for p in jpeg_folder.rglob("*.jpg"))
    worst = 0.0
    for seed, path in enumerate(paths):
        torch.manual_seed(seed)
        reference = transform(load_rgb(path))
        torch.manual_seed(seed)
        fast = transform.from_file(path)
        assert fast.shape == reference.shape == (3, img_size, img_size) and fast.dtype == torch.float32
        if not reduced:  # the same decode (PIL's or torchvision's libjpeg-turbo: <= 1 level apart) and kernel
            assert (fast - reference).abs().max().item() * STD[2] * 255 <= 1.01
        worst = max(worst, (fast - reference).abs().mean().item() * STD[0] * 255)  # in uint8 levels
    if reduced:
        assert 0 < worst < 6.0, worst  # decoded at 1/2-1/8 scale: a slightly different resampling


def test_image_folder_pretraining_items_use_the_file_path_with_the_same_seeds(jpeg_folder):
    folder = ImageFolder(str(jpeg_folder), split=None)
    transform = PretrainTransform(96, MEAN, STD)
    fast = SeededAugmentation(folder, transform, seed=5)
    assert fast.from_files
    plain = SeededAugmentation(folder, transform, seed=5)
    plain.from_files = False
    for index in range(len(folder)):
        a, b = fast[index], plain[index]
        assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_unreadable_file_is_replaced_on_the_file_path(tmp_path):
    """The file path keeps the loader's stand-in rule: broken.jpg (sorted first) gets the only readable
    file in its place, augmented under its own seed, and counts one replacement."""
    (tmp_path / "a").mkdir()
    Image.fromarray(_photo(40, 40, 0)).save(tmp_path / "a" / "ok.jpg")
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    items = SeededAugmentation(ImageFolder(str(tmp_path), split=None), PretrainTransform(16, MEAN, STD), seed=0)
    assert items.from_files
    (stand_in, _, seed0, replaced0), (image, _, seed1, replaced1) = items[0], items[1]
    assert (replaced0, replaced1) == (1, 0) and seed0 != seed1
    assert stand_in.shape == image.shape == (3, 16, 16)


def _jpeg_bytes(mode: str, seed: int = 0, **save) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(_photo(48, 64, seed)).convert(mode).save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def _pil_rgb(data: bytes) -> torch.Tensor:
    import io

    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


@pytest.fixture(params=["simplejpeg", "torchvision"])
def turbo_decoder(request, monkeypatch):
    """Both libjpeg-turbo decoders: simplejpeg (the default) and torchvision's, used where it is missing."""
    if request.param == "torchvision":
        monkeypatch.setattr(transforms_module, "_simplejpeg", lambda: None)
    elif transforms_module._simplejpeg() is None:
        pytest.skip("simplejpeg is not installed")
    return request.param


@pytest.mark.parametrize("progressive", [False, True])
def test_colour_jpeg_decodes_as_pil_does_into_a_channels_last_tensor(turbo_decoder, progressive):
    data = _jpeg_bytes("RGB", progressive=progressive)
    chw = decode_colour_jpeg(data)
    assert chw.shape == (3, 48, 64) and chw.dtype == torch.uint8
    assert chw.stride() == (1, 64 * 3, 3)  # (H, W, 3) in memory: the vectorised resize kernel's layout
    assert (chw.int() - _pil_rgb(data).int()).abs().max().item() <= 1  # PIL's libjpeg-turbo: same IDCT


def test_jpeg_decoder_refuses_what_pil_must_handle(turbo_decoder):
    """Grey and CMYK JPEGs, truncated and non-JPEG data: None, so PIL decodes or reports them."""
    rgb = _jpeg_bytes("RGB")
    if turbo_decoder == "simplejpeg":  # torchvision converts grey and CMYK itself; PIL does it for both
        assert decode_colour_jpeg(_jpeg_bytes("L")) is None and decode_colour_jpeg(_jpeg_bytes("CMYK")) is None
    assert decode_colour_jpeg(rgb[: len(rgb) // 2]) is None
    assert decode_colour_jpeg(b"\x89PNG\r\n\x1a\n not a jpeg") is None


def test_colour_jpeg_size_reads_the_header_only():
    if transforms_module._simplejpeg() is None:
        pytest.skip("simplejpeg is not installed")
    rgb = _jpeg_bytes("RGB")
    assert colour_jpeg_size(rgb) == (48, 64)
    assert colour_jpeg_size(rgb[: len(rgb) // 2]) == (48, 64)  # the header is all it reads
    assert colour_jpeg_size(_jpeg_bytes("L")) is None and colour_jpeg_size(b"GIF89a") is None


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_file_crop_path_matches_the_tensor_path_for_every_jpeg_kind(tmp_path, turbo_decoder, mode):
    path = tmp_path / "x.jpg"
    path.write_bytes(_jpeg_bytes(mode, seed=3))
    transform = PretrainTransform(32, MEAN, STD, crop_scale_min=0.5)
    for seed in range(4):
        torch.manual_seed(seed)
        reference = transform(load_rgb(str(path)))
        torch.manual_seed(seed)
        fast = transform.from_file(str(path))
        assert fast.shape == reference.shape == (3, 32, 32)
        assert (fast - reference).abs().max().item() * STD[2] * 255 <= 1.01


def test_truncated_jpeg_is_replaced_on_the_file_path_not_half_decoded(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(_photo(40, 40, 0)).save(tmp_path / "a" / "ok.jpg")
    whole = _jpeg_bytes("RGB", seed=1)
    (tmp_path / "a" / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # sorted first
    items = SeededAugmentation(ImageFolder(str(tmp_path), split=None), PretrainTransform(16, MEAN, STD), seed=0)
    assert items.from_files
    assert (items[0][3], items[1][3]) == (1, 0)  # the cut file counted as replaced, the good one not


@pytest.mark.parametrize("layout", ["channels_first", "channels_last", "float", "grey"])
def test_direct_resized_crop_gives_torchvision_pixels(layout):
    """The pre-training crop calls torch's antialiased bicubic directly: the same pixels (and layout) as
    torchvision's resized_crop for boxes inside the image, up- and downscaled; other boxes go to torchvision."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from deepmim.data.transforms import resized_crop_bicubic

    gen = torch.Generator().manual_seed(0)
    hwc = torch.randint(0, 256, (48, 40, 1 if layout == "grey" else 3), dtype=torch.uint8, generator=gen)
    image = hwc.permute(2, 0, 1) if layout == "channels_last" else hwc.permute(2, 0, 1).contiguous()
    if layout == "float":
        image = image.float() / 255
    boxes = [(0, 0, 48, 40), (3, 5, 20, 30), (10, 0, 38, 17), (0, 0, 24, 24), (30, 30, 30, 30), (-2, 1, 20, 20)]
    for size in ([24, 24], [64, 64]):
        for box in boxes:
            ours = resized_crop_bicubic(image, *box, size)
            theirs = F.resized_crop(image, *box, size, InterpolationMode.BICUBIC, antialias=True)
            assert ours.shape == theirs.shape == (image.shape[0], *size) and ours.dtype == image.dtype
            assert torch.equal(ours, theirs), (layout, box, size)
            assert ours.permute(1, 2, 0).is_contiguous() == theirs.permute(1, 2, 0).is_contiguous()  # layout
