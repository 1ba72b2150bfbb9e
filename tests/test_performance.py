"""The speed mechanisms keep results: thread/worker plans within the cores, the compile rule, bf16
features and a bf16 teacher within bf16 tolerance of fp32, the file-decoding crop path equal (or close)
to the tensor path with the same random draws, and regional compile equal to eager."""
import dataclasses
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepmim.config.schema import DataConfig, FeatureConfig
from deepmim.data import ImageFolder, PretrainTransform, SeededAugmentation, load_rgb
from deepmim.data import transforms as transforms_module
from deepmim.data.transforms import colour_jpeg_size, decode_colour_jpeg, draft_factor, scale_box
from deepmim.models import DeepMIM
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.compile import COMPILE_MIN_STEPS, compile_blocks, should_compile
from deepmim.training.parallel import transformer_blocks
from deepmim.training.threads import apply_thread_plan, plan_threads, planned_threads
from tests.conftest import save_tiny_pretrained, tiny_model_config

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ----------------------------------------------------------------------------- threads and workers

@pytest.mark.parametrize("cores", [1, 2, 3, 8])
@pytest.mark.parametrize("workers", [0, 1, 2, 10])
def test_thread_plan_never_exceeds_the_cores(cores, workers):
    plan = plan_threads(workers, cores=cores)
    assert plan.torch_threads >= 1
    assert plan.torch_threads + plan.workers <= cores
    assert plan.workers == min(workers, cores - 1)
    assert plan.torch_threads == cores - plan.workers  # no core left idle
    assert f"{plan.torch_threads} torch thread" in plan.describe()


def test_streamed_shards_keep_their_reader_count():
    """A wds stream is dealt to data.num_workers readers, which fixes its order and epoch length: the plan keeps
    that count (and says why) and gives torch what is left, at least one thread."""
    plan = plan_threads(2, cores=2, fixed_workers=True)
    assert (plan.workers, plan.torch_threads) == (2, 1) and "kept" in plan.describe()
    assert plan_threads(1, cores=4, fixed_workers=True).torch_threads == 3


def test_thread_plan_divides_the_cores_among_local_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    plan = plan_threads(1)
    assert plan.cores == 2 and (plan.torch_threads, plan.workers) == (1, 1)


def test_apply_thread_plan_respects_omp_num_threads_and_restores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    try:
        plan = apply_thread_plan(0, cores=4)
        assert plan.torch_threads == 1 and torch.get_num_threads() == 1
        plan.restore()
        assert torch.get_num_threads() == 2
        with planned_threads(0, cores=4) as plan:
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_skeleton_gives_loaders_the_planned_workers():
    from deepmim.training.env import Env

    data = DataConfig(num_workers=4)
    env = Env(torch.device("cpu"), "fp32", loader_workers=1)
    assert env.data(data).num_workers == 1 and data.num_workers == 4  # the config itself is left alone
    assert Env(torch.device("cpu"), "fp32").data(data) is data


def test_compile_rule(monkeypatch):
    import deepmim.training.compile as compile_mod

    real = compile_mod.has_cpp_compiler
    monkeypatch.setattr(compile_mod, "has_cpp_compiler", lambda: True)
    assert should_compile(True, 1) and not should_compile(False, 10 ** 6)
    for device, steps in COMPILE_MIN_STEPS.items():
        assert not should_compile("auto", steps - 1, device) and should_compile("auto", steps, device)
    assert COMPILE_MIN_STEPS["cpu"] > 640 * 10  # the demo (640 steps) stays eager, by a wide margin
    big = 10 * COMPILE_MIN_STEPS["cpu"]
    assert not should_compile("auto", big, "cpu", "fp32") and should_compile("auto", big, "cpu", "bf16")
    assert should_compile("auto", big, "cuda", "fp32") and should_compile(True, 1, "cpu", "fp32")
    with pytest.raises(Exception, match="train.compile"):
        should_compile("yes", 10)
    monkeypatch.setattr(compile_mod, "has_cpp_compiler", real)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compile_mod.shutil, "which", lambda name: None)  # no C++ compiler: inductor cannot build
    assert not real() and not should_compile("auto", 10 ** 6, "cuda")


# ----------------------------------------------------------------------------- bf16 against fp32

def test_bf16_features_are_within_bf16_tolerance_of_fp32(tmp_path):
    from deepmim.analysis.features import extract_features

    ckpt = save_tiny_pretrained(tmp_path / "tiny.pt")
    data = DataConfig(name="embedded", img_size=16, num_samples=24)
    fc = FeatureConfig(cache_dir=str(tmp_path / "cache"), progress=False, batch_size=8, blocks=[2, 4])
    fp32 = extract_features(ckpt, data, "val", dataclasses.replace(fc, precision="fp32"))
    bf16 = extract_features(ckpt, data, "val", dataclasses.replace(fc, precision="bf16"))
    for block in (2, 4):
        a, b = fp32.blocks[block], bf16.blocks[block]
        assert b.dtype == torch.float32
        rel = (a - b).norm() / a.norm()
        assert 0 < rel < 2e-2, rel  # different (bf16 did run), but close
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one cache file per precision


def test_bf16_teacher_is_stored_once_and_its_loss_stays_close(tmp_path):
    pytest.importorskip("open_clip")
    from tests.test_targets import tiny_clip

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


# ----------------------------------------------------------------------------- JPEG files straight into the crop

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

# ----------------------------------------------------------------------------- regional compile

@pytest.mark.slow
def test_regional_compile_equals_eager_and_keeps_parameter_names():
    torch.manual_seed(0)
    eager = DeepMIM(tiny_model_config())
    compiled = DeepMIM(tiny_model_config())
    compiled.load_state_dict(eager.state_dict())
    assert compile_blocks(transformer_blocks(compiled)) == 6  # 4 encoder blocks + 2 one-block decoders
    assert list(compiled.state_dict()) == list(eager.state_dict())
    images = torch.randn(4, 3, 16, 16)
    losses = []
    for model in (eager, compiled):
        out = model(images, generator=torch.Generator().manual_seed(3))  # masks drawn outside the blocks
        out.loss.backward()
        losses.append((out.loss.item(), out.mask, model.encoder.blocks[0].attn.qkv.weight.grad.clone()))
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-5)
    assert torch.equal(losses[0][1], losses[1][1])
    assert torch.allclose(losses[0][2], losses[1][2], rtol=1e-4, atol=1e-6)


def test_every_benchmark_script_imports_names_that_exist():
    """The benchmarks are not run by the suite; a refactor that moves a name must still not break them."""
    import ast
    import importlib

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    checked = 0
    for script in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deepmim"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{script.name}: {node.module} has no {alias.name}"
                    checked += 1
    assert checked >= 10


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


FAULTS_SCRIPT = """
import resource, sys, torch
from deepmim.training.host_memory import reuse_freed_host_memory
print(reuse_freed_host_memory(sys.argv[1] == "reuse"))
torch.set_num_threads(2)  # the faults come from the OpenMP threads' arenas as much as the main one
from deepmim.models.presets import preset_config
from deepmim.models.deepmim import DeepMIM
torch.manual_seed(0)
model = DeepMIM(preset_config("deepmim_pixel_vit_micro_p4_32"))
images = torch.randn(16, 3, 32, 32)
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(images).loss.backward()
    # one activation of a real batch's size: above the 32 MiB up to which glibc's own threshold adapts, so
    # left alone it is unmapped at every free on any machine (the small model's own faults vary by machine)
    activation = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    del activation
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_host_memory_is_reused_so_steps_stop_page_faulting():
    """Left alone, glibc unmaps and trims a step's large freed activations and every step faults them in
    again (a 64 MiB one: 16384 minor faults per step with 4 KiB pages; the micro preset's own small ones
    fault thousands of times per step on some machines, almost never on others, as glibc's adaptive
    threshold settles); tuned, warm steps fault >10x less."""
    faults = {}
    for mode in ("default", "reuse"):
        run = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.split("\n")
        faults[mode] = ([int(n) for n in lines[1:9]], lines[0])
    assert faults["reuse"][1].startswith("host malloc keeps freed blocks up to")
    reused, default = sum(faults["reuse"][0][2:]), sum(faults["default"][0][2:])  # steps 3-8, warm
    assert default >= 100, faults  # what the setting removes (and proof that the count sees faults; >= 100
    # even with transparent huge pages always on: 32 faults per 64 MiB)
    assert reused * 10 <= default, faults


def test_feature_extraction_reuses_host_memory_as_its_config_says(tmp_path, monkeypatch):
    import deepmim.analysis.features as features

    asked = []
    monkeypatch.setattr(features, "reuse_freed_host_memory", lambda enabled=True: asked.append(enabled) or "")
    ckpt = save_tiny_pretrained(tmp_path / "tiny.pt")
    data = DataConfig(name="embedded", img_size=16, num_samples=8)
    fc = FeatureConfig(cache_dir=None, progress=False, batch_size=8, blocks=[2], precision="fp32")
    features.extract_features(ckpt, data, "val", fc)
    features.extract_features(ckpt, data, "val", dataclasses.replace(fc, reuse_host_memory=False))
    assert asked == [True, False]


def test_training_logs_the_host_memory_setting_and_can_leave_malloc_alone(tmp_path, capsys):
    from deepmim.training.host_memory import reuse_freed_host_memory
    from tests.test_training import tiny_pretrain_config

    run_pretrain(tiny_pretrain_config(tmp_path / "off", epochs=1, reuse_host_memory=False))
    assert "host malloc left as it is (train.reuse_host_memory=false)" in capsys.readouterr().err
    run_pretrain(tiny_pretrain_config(tmp_path / "on", epochs=1))
    assert reuse_freed_host_memory(True) in capsys.readouterr().err


def test_token_rows_are_taken_with_the_values_and_gradients_of_maes_gather():
    from deepmim.models.masking import take_tokens

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(5, 16, 8, generator=gen, requires_grad=True)
    for keep in (16, 4):  # a full permutation (the decoder's restore) and a subset (the encoder's visible)
        ids = torch.argsort(torch.rand(5, 16, generator=gen), dim=1)[:, :keep]
        ours = take_tokens(tokens, ids)
        theirs = torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, 8))
        assert ours.shape == (5, keep, 8) and torch.equal(ours, theirs)
        upstream = torch.randn(5, keep, 8, generator=gen)
        assert torch.equal(torch.autograd.grad(ours, tokens, upstream)[0],
                           torch.autograd.grad(theirs, tokens, upstream)[0])


def test_visible_patches_are_embedded_as_the_conv_embeds_them_with_the_same_gradients():
    from deepmim.models.masking import random_masking, take_tokens

    torch.manual_seed(0)
    encoder = DeepMIM(tiny_model_config()).encoder
    images = torch.randn(3, 3, 16, 16)
    masking = random_masking(3, encoder.num_patches, 0.75, images.device, None, None)
    ours = encoder.embed_visible(images, masking.ids_keep)
    theirs = take_tokens(encoder.patch_embed(images) + encoder.pos_embed[:, 1:, :], masking.ids_keep)
    assert ours.shape == (3, 4, 32)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(ours)
    weights = [encoder.patch_embed.proj.weight, encoder.patch_embed.proj.bias]
    for a, b in zip(torch.autograd.grad(ours, weights, upstream), torch.autograd.grad(theirs, weights, upstream)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(encoder.embed(images, masking)[:, 1:], ours)  # the path a masked forward takes
    encoder.embed_kept_only = False  # MAE's order, as the benchmarks' authors' baseline runs it
    assert torch.equal(encoder.embed(images, masking)[:, 1:], theirs)
    with pytest.raises(ValueError, match="for an encoder of"):
        encoder.embed_visible(torch.randn(3, 3, 20, 20), masking.ids_keep)
