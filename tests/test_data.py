"""Tests of deepmim.data: datasets, decoding robustness, augmentation seeding, resumable sampling."""
from __future__ import annotations

import gzip
import logging
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from deepmim.config.schema import DataConfig
from deepmim.data import (
    Batch,
    DataError,
    EmbeddedShapes,
    IdxDataset,
    ImageFolder,
    NormalizeUint8,
    ResumableSampler,
    SeededAugmentation,
    TransformedDataset,
    build_dataset,
    build_eval_transform,
    build_pretrain_loader,
    build_pretrain_transform,
    collate_skip_broken,
    denormalize,
    read_idx,
    sample_crop_box,
)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ---------------------------------------------------------------- embedded dataset


def test_embedded_items_are_reproducible_per_index_and_seed():
    a, b = EmbeddedShapes(100, 32, seed=0), EmbeddedShapes(100, 32, seed=0)
    forward = [a[i][0].numpy().tobytes() for i in range(20)]
    backward = [b[i][0].numpy().tobytes() for i in reversed(range(20))][::-1]
    assert forward == backward
    assert a[7][1] == b[7][1]
    other_seed = EmbeddedShapes(100, 32, seed=1)
    other_split = EmbeddedShapes(100, 32, split="val", seed=0)
    for i in range(20):
        assert not torch.equal(a[i][0], other_seed[i][0])
        assert not torch.equal(a[i][0], other_split[i][0])
    assert torch.equal(a[-1][0], a[99][0])
    with pytest.raises(IndexError):
        a[100]


@pytest.mark.parametrize("size", [28, 32, 64])
def test_embedded_shapes_and_dtypes(size):
    ds = EmbeddedShapes(20, img_size=size)
    for i in range(10):
        image, label = ds[i]
        mask = ds.mask(i)
        assert image.shape == (3, size, size) and image.dtype == torch.uint8
        assert mask.shape == (size, size) and mask.dtype == torch.int64
        assert 0 <= label < 10


def test_embedded_labels_cover_all_classes_evenly():
    ds = EmbeddedShapes(10_000, 32)
    assert len(ds.classes) == 10 and len(set(ds.classes)) == 10
    indices = np.random.default_rng(0).choice(len(ds), 2000, replace=False)
    counts = Counter(ds[int(i)][1] for i in indices)
    assert sorted(counts) == list(range(10))
    assert all(150 <= c <= 250 for c in counts.values()), counts


def test_embedded_mask_matches_the_image():
    ds = EmbeddedShapes(300, 32)
    for i in range(300):
        image, label, mask = ds.get_with_mask(i)
        assert torch.equal(image, ds[i][0]) and torch.equal(mask, ds.mask(i))
        assert set(mask.unique().tolist()) == {0, label + 1}, f"item {i}: shape missing or wrong id"
        inside = image[:, mask > 0].float()
        outside = image[:, mask == 0].float()
        gap = (inside.mean(1) - outside.mean(1)).norm()
        spread = max(inside.std(1).max(), outside.std(1).max())
        # Shape and background colours are far apart compared to texture/noise within each.
        assert gap > 40 and gap > 2.5 * spread, (i, gap, spread)


def _edge_orientation_features(images: torch.Tensor) -> np.ndarray:
    """Colour-free HOG-like features: magnitude-weighted histogram of edge orientations."""
    gray = images.float().mean(1)
    gx = gray[:, 1:-1, 2:] - gray[:, 1:-1, :-2]
    gy = gray[:, 2:, 1:-1] - gray[:, :-2, 1:-1]
    magnitude = (gx**2 + gy**2).sqrt().flatten(1)
    orientation = (torch.atan2(gy, gx) % np.pi).flatten(1)  # polarity-free: fg may be darker
    bins = (orientation / np.pi * 12).long().clamp(max=11)
    hist = torch.zeros(len(gray), 12).scatter_add_(1, bins, magnitude)
    hist = hist / magnitude.sum(1, keepdim=True)
    strong = (magnitude > 0.5 * magnitude.amax(1, keepdim=True)).float().mean(1, keepdim=True)
    return torch.cat([hist, hist**2, strong], 1).numpy()


def _ridge_accuracy(train_x, train_y, test_x, test_y) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.c_[(train_x - mean) / std, np.ones(len(train_x))]
    weights = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ np.eye(10)[train_y])
    scores = np.c_[(test_x - mean) / std, np.ones(len(test_x))] @ weights
    return float((scores.argmax(1) == test_y).mean())


def test_embedded_classes_are_learnable_from_shape_but_not_from_pixel_statistics():
    train, test = EmbeddedShapes(2000, 32, "train"), EmbeddedShapes(600, 32, "val")
    train_x = torch.stack([train[i][0] for i in range(len(train))])
    test_x = torch.stack([test[i][0] for i in range(len(test))])
    train_y, test_y = np.arange(len(train)) % 10, np.arange(len(test)) % 10

    shape_acc = _ridge_accuracy(
        _edge_orientation_features(train_x), train_y, _edge_orientation_features(test_x), test_y
    )

    def colour_stats(x):
        return torch.cat([x.float().mean((2, 3)), x.float().std((2, 3))], 1).numpy()

    colour_acc = _ridge_accuracy(colour_stats(train_x), train_y, colour_stats(test_x), test_y)
    assert shape_acc > 0.6, shape_acc  # chance is 0.1
    assert colour_acc < 0.3, colour_acc


# ---------------------------------------------------------------- image folder


def _write_image_folder(root):
    """root/train/{cat,dog} with every awkward mode plus two broken files."""
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    cat.mkdir(parents=True)
    dog.mkdir(parents=True)
    Image.new("L", (20, 16), 77).save(cat / "gray.png")
    palette = Image.new("P", (18, 18), 1)
    palette.putpalette([0, 0, 0, 200, 10, 30] + [0] * 762)
    palette.save(cat / "palette.png")
    rgba = Image.new("RGBA", (16, 16), (10, 200, 10, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 16))  # left half fully transparent (and black)
    rgba.save(cat / "rgba.png")
    Image.new("LA", (12, 12), (90, 255)).save(cat / "la.png")
    Image.new("CMYK", (14, 14), (0, 255, 255, 0)).save(cat / "cmyk.jpg")
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(dog / "ok.JPG", quality=95)
    Image.fromarray(noisy).save(dog / "whole.jpg", quality=95)
    data = (dog / "whole.jpg").read_bytes()
    (dog / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (dog / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    (dog / "notes.txt").write_text("not listed")
    (dog / ".hidden.png").write_bytes(b"not listed either")
    return root


@pytest.fixture
def image_root(tmp_path):
    return _write_image_folder(tmp_path / "images")


def test_image_folder_lists_without_opening_and_uses_split_dir(image_root):
    ds = ImageFolder(str(image_root), split="train")
    assert ds.classes == ["cat", "dog"]
    names = [os.path.basename(p) for p, _ in ds.samples]
    assert names == [
        "cmyk.jpg", "gray.png", "la.png", "palette.png", "rgba.png",
        "garbage.png", "ok.JPG", "truncated.jpg", "whole.jpg",
    ]  # fmt: skip
    assert ds.targets == [0] * 5 + [1] * 4
    # Without a <split> folder the root itself is the class root.
    assert ImageFolder(str(image_root / "train"), split="train").classes == ["cat", "dog"]


def test_image_folder_converts_every_mode_to_rgb(image_root):
    ds = ImageFolder(str(image_root))
    by_name = {os.path.basename(p): i for i, (p, _) in enumerate(ds.samples)}
    for name in ["cmyk.jpg", "gray.png", "la.png", "palette.png", "rgba.png", "ok.JPG", "whole.jpg"]:
        image, _ = ds[by_name[name]]
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3, name
    gray = ds[by_name["gray.png"]][0]
    assert gray.shape == (3, 16, 20) and (gray == 77).all()
    assert ds[by_name["palette.png"]][0][:, 0, 0].tolist() == [200, 10, 30]
    rgba = ds[by_name["rgba.png"]][0]
    assert (rgba[:, :, :8] == 255).all(), "transparent pixels must be composited on white"
    assert rgba[:, 0, 12].tolist() == [10, 200, 10]
    assert (ds[by_name["la.png"]][0] == 90).all()
    red = ds[by_name["cmyk.jpg"]][0].float().mean((1, 2))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_broken_images_are_skipped_warned_once_and_counted(image_root, caplog):
    ds = ImageFolder(str(image_root))
    broken = {i for i, (p, _) in enumerate(ds.samples) if os.path.basename(p) in ("garbage.png", "truncated.jpg")}
    with caplog.at_level(logging.WARNING, logger="deepmim.data.folder"):
        for _ in range(2):
            results = [ds[i] for i in range(len(ds))]
    assert {i for i, r in enumerate(results) if r is None} == broken
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and any("truncated.jpg" in m for m in warned) and any("garbage.png" in m for m in warned)

    # training items: an unreadable file is replaced by a deterministic other sample, so the batch stays full
    augmented = SeededAugmentation(ds, build_pretrain_transform(16, MEAN, STD), seed=0)
    batch = collate_skip_broken([augmented[i] for i in range(len(ds))])
    assert isinstance(batch, Batch)
    assert batch.num_skipped >= 2  # the two broken files (and any broken stand-in drawn for them)
    assert batch.images.shape == (len(ds), 3, 16, 16) and batch.images.dtype == torch.float32
    readable = [i for i in range(len(ds)) if i not in broken]
    assert [batch.labels[i].item() for i in readable] == [ds.samples[i][1] for i in readable]
    again = collate_skip_broken([augmented[i] for i in range(len(ds))])
    assert torch.equal(again.images, batch.images) and again.num_skipped == batch.num_skipped
    # evaluation items (no augmentation wrapper): unreadable files are left out
    eval_items = TransformedDataset(ds, build_eval_transform(16, MEAN, STD))
    evaluation = collate_skip_broken([eval_items[i] for i in range(len(ds))])
    assert evaluation.num_skipped == 2 and evaluation.images.shape[0] == len(ds) - 2
    assert evaluation.labels.tolist() == [0] * 5 + [1] * 2

    empty = collate_skip_broken([None, None])
    assert empty.num_skipped == 2 and empty.images.shape[0] == 0 and empty.labels.shape == (0,)


def test_strict_mode_names_the_broken_file(image_root):
    ds = ImageFolder(str(image_root), strict=True)
    index = [os.path.basename(p) for p, _ in ds.samples].index("truncated.jpg")
    with pytest.raises(DataError, match=r"truncated\.jpg.*data\.strict=false"):
        ds[index]


def test_image_folder_loader_counts_skipped_files(image_root):
    cfg = DataConfig(name="imagefolder", path=str(image_root), img_size=16, num_workers=0)
    loader = build_pretrain_loader(cfg, batch_size=3, seed=0, drop_last=False)
    loader.set_epoch(0)
    batches = list(loader)
    assert sum(b.num_skipped for b in batches) >= 2  # both broken files, each replaced by another sample
    assert [len(b.labels) for b in batches] == [3, 3, 3]  # every batch full
    assert all(b.images.shape[1:] == (3, 16, 16) for b in batches)


def test_image_folder_errors_say_what_to_set(tmp_path):
    with pytest.raises(DataError, match=r"'.*nope' does not exist; set data\.path"):
        ImageFolder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolder(str(tmp_path / "empty"))
    (tmp_path / "no_images" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "train" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        ImageFolder(str(tmp_path / "no_images"))


# ---------------------------------------------------------------- IDX (MNIST)


def _write_idx(path, array: np.ndarray, type_code: int = 0x08):
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def test_idx_round_trip_plain_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5], dtype=np.uint8))
    _write_idx(tmp_path / "t10k-images.idx3-ubyte", test_images)  # Kaggle-style name
    _write_idx(tmp_path / "t10k-labels.idx1-ubyte", np.array([9, 2, 6], dtype=np.uint8))

    train = IdxDataset(str(tmp_path), "train")
    assert len(train) == 5 and [train[i][1] for i in range(5)] == [3, 1, 4, 1, 5]
    image = train[2][0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8  # grey stays grey
    assert torch.equal(image[0], torch.from_numpy(train_images[2]))
    for split in ("val", "test"):
        test = IdxDataset(str(tmp_path), split)
        assert len(test) == 3 and test[0][1] == 9 and torch.equal(test[1][0][0], torch.from_numpy(test_images[1]))

    floats = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    _write_idx(tmp_path / "floats.idx", floats, type_code=0x0D)
    assert np.array_equal(read_idx(str(tmp_path / "floats.idx")), floats)


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(str(tmp_path / "bad"))
    _write_idx(tmp_path / "short", np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataError, match="header"):
        read_idx(str(tmp_path / "short"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        IdxDataset(str(tmp_path), "train")
    with pytest.raises(DataError, match="does not exist"):
        IdxDataset(str(tmp_path / "missing"))


FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_test_split():
    ds = build_dataset(DataConfig(name="idx", path=FASHION, split="val"))
    assert len(ds) == 10_000 and ds[0][0].shape == (1, 28, 28)
    assert Counter(ds.targets) == {c: 1000 for c in range(10)}


# ---------------------------------------------------------------- transforms


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


# ---------------------------------------------------------------- seeding and sampling


def test_seeded_augmentation_depends_only_on_seed_epoch_index():
    raw = EmbeddedShapes(50, 32)
    aug = SeededAugmentation(raw, build_pretrain_transform(32, MEAN, STD), seed=3)
    aug.set_epoch(2)
    in_order = [aug[i][0] for i in range(10)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    shuffled = {i: aug[i][0] for i in [7, 3, 9, 0, 1, 8, 2, 6, 5, 4, 3]}
    assert torch.equal(torch.get_rng_state(), state), "augmentation must not touch the global RNG"
    assert all(torch.equal(in_order[i], shuffled[i]) for i in range(10))
    other = SeededAugmentation(raw, build_pretrain_transform(32, MEAN, STD), seed=3)
    other.set_epoch(2)
    assert torch.equal(other[5][0], in_order[5])
    aug.set_epoch(3)
    assert sum(not torch.equal(aug[i][0], in_order[i]) for i in range(10)) >= 9
    with pytest.raises(DataError, match="unreadable images in a row"):
        SeededAugmentation([None], lambda x: x, seed=0)[0]  # nothing readable to stand in


def test_sampler_resumes_mid_epoch_exactly():
    full = ResumableSampler(103, seed=5)
    full.set_epoch(4)
    order = list(full)
    assert sorted(order) == list(range(103)) and len(full) == 103
    resumed = ResumableSampler(103, seed=5)
    resumed.set_epoch(4)
    resumed.set_start(batch_index=6, batch_size=8)
    assert list(resumed) == order[48:] and len(resumed) == 103 - 48
    resumed.set_epoch(5)  # a new epoch starts from its beginning again
    assert len(list(resumed)) == 103 and list(resumed) != order
    with pytest.raises(ValueError):
        resumed.set_start(14, 8)


@pytest.mark.parametrize("drop_last, per_rank", [(True, 3), (False, 4)])
def test_sampler_ranks_are_disjoint_and_cover_the_epoch(drop_last, per_rank):
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(10, seed=1, rank=rank, world_size=3, drop_last=drop_last)
        sampler.set_epoch(7)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == per_rank
    flat = [i for shard in shards for i in shard]
    if drop_last:
        assert len(set(flat)) == 9  # disjoint; the one sample that does not split evenly is dropped
    else:
        assert set(flat) == set(range(10))  # covered; 2 padded repeats keep ranks equal
    single = ResumableSampler(10, seed=1)
    single.set_epoch(7)
    assert set(flat) <= set(single)


def test_loader_resume_and_worker_count_give_identical_batches():
    cfg = DataConfig(num_samples=96, img_size=16, num_workers=0)
    loader = build_pretrain_loader(cfg, batch_size=16, seed=11)
    assert isinstance(loader.sampler, ResumableSampler) and isinstance(loader.dataset, SeededAugmentation)
    state = torch.get_rng_state()
    loader.set_epoch(1)
    epoch1 = list(loader)
    assert torch.equal(torch.get_rng_state(), state), "iterating must not consume the global RNG"
    assert len(epoch1) == 6 and epoch1[0].images.shape == (16, 3, 16, 16)

    resumed = build_pretrain_loader(cfg, batch_size=16, seed=11)
    resumed.set_epoch(1, start_batch=4)
    tail = list(resumed)
    assert len(tail) == 2
    for got, want in zip(tail, epoch1[4:]):
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)

    workers = build_pretrain_loader(DataConfig(num_samples=96, img_size=16, num_workers=2), batch_size=16, seed=11)
    workers.set_epoch(0)
    list(workers)  # starts the persistent workers on epoch 0
    workers.set_epoch(1)  # must reach the already running workers
    for got, want in zip(workers, epoch1):
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)


def test_preflight_errors_say_what_to_set(tmp_path):
    with pytest.raises(DataError, match="unknown data.name 'cifar'.*embedded, imagefolder, idx"):
        build_dataset(DataConfig(name="cifar"))
    with pytest.raises(DataError, match="data.path is required"):
        build_pretrain_loader(DataConfig(name="imagefolder"), batch_size=4, seed=0)
    with pytest.raises(DataError, match=r"data\.path '.*missing' does not exist; set data\.path to an ImageNet"):
        build_dataset(DataConfig(name="imagefolder", path=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="fewer than one batch"):
        build_pretrain_loader(DataConfig(num_samples=10), batch_size=16, seed=0)
    with pytest.raises(DataError, match="num_samples"):
        build_dataset(DataConfig(num_samples=0))
    ds = build_dataset(DataConfig(img_size=28, num_samples=5), split="val")
    assert isinstance(ds, EmbeddedShapes) and ds.split == "val" and ds[0][0].shape == (3, 28, 28)


def test_masking_noise_depends_on_the_sample_not_on_the_batching():
    """Same (seed, epoch, index) -> same mask noise, whatever the batch size or the rank."""
    from deepmim.models.masking import noise_from_seeds

    cfg = DataConfig(name="embedded", img_size=16, num_samples=16, num_workers=0)

    def noise_by_image(batch_size, rank=0, world=1):
        loader = build_pretrain_loader(cfg, batch_size, seed=5, rank=rank, world_size=world, mask_patches=16)
        loader.set_epoch(1)
        found = {}
        for batch in loader:
            assert batch.noise.shape == (batch.images.shape[0], 16)
            assert torch.equal(batch.noise, noise_from_seeds(batch.seeds, 16))
            for image, noise in zip(batch.images, batch.noise):
                found[image.sum().item()] = noise
        return found

    whole = noise_by_image(8)
    halves = {**noise_by_image(4, 0, 2), **noise_by_image(4, 1, 2)}
    assert len(whole) == 16 and sorted(whole) == sorted(halves)
    assert all(torch.equal(whole[k], halves[k]) for k in whole)
    other_epoch = build_pretrain_loader(cfg, 8, seed=5, mask_patches=16)
    other_epoch.set_epoch(2)
    assert not torch.equal(next(iter(other_epoch)).noise, next(iter(build_pretrain_loader(cfg, 8, seed=5, mask_patches=16))).noise)
