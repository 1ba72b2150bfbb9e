"""Streaming data: WebDataset shards (data.name=wds) and Hugging Face datasets (data.name=hf), written here.

The properties: every sample read once per epoch over ranks x workers, the same augmentation and mask for a
sample wherever it lands, an exact resume mid-epoch, and `deepmim data pack` shards that read back as the
ImageFolder they came from."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepmim.config.schema import DataConfig
from deepmim.data import build_dataset, build_pretrain_loader
from deepmim.data.errors import DataError

wds = pytest.importorskip("webdataset")


def png(value: int, size: int = 8) -> bytes:
    rng = np.random.default_rng(value)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(root, n_samples=48, per_shard=6, split="train"):
    """Shards whose label is the sample's number (0..n-1): a sample names itself."""
    from deepmim.data.wds import write_index

    root.mkdir(parents=True, exist_ok=True)
    urls, counts = [], []
    for start in range(0, n_samples, per_shard):
        url = root / f"{split}-{len(urls):06d}.tar"
        with wds.TarWriter(str(url)) as sink:
            for i in range(start, min(start + per_shard, n_samples)):
                sink.write({"__key__": f"s{i:05d}", "png": png(i), "cls": str(i).encode()})
        urls.append(str(url))
        counts.append(min(per_shard, n_samples - start))
    write_index(root / f"{split}.json", urls, counts, [str(i) for i in range(n_samples)])
    return root


def wds_config(root, workers=0, **kw) -> DataConfig:
    return DataConfig(name="wds", path=str(root), img_size=8, num_workers=workers, shuffle_buffer=4,
                      crop_scale_min=0.5, **kw)


def epoch_batches(loader, epoch, start=0):
    loader.set_epoch(epoch, start_batch=start)
    return [(b.labels.tolist(), b.images, b.seeds, b.noise) for b in loader]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("wds") / "shards")


def test_every_sample_once_per_epoch_over_ranks_and_workers(shards):
    seen = []
    for rank in range(2):
        loader = build_pretrain_loader(wds_config(shards, workers=2), batch_size=2, seed=0, rank=rank, world_size=2,
                                       mask_patches=4)
        assert len(loader) == 12  # 8 shards over 2 ranks x 2 workers: 2 shards = 12 samples = 6 batches a worker
        batches = epoch_batches(loader, 0)
        assert len(batches) == 12 and all(len(labels) == 2 for labels, *_ in batches)
        seen += [label for labels, *_ in batches for label in labels]
    assert sorted(seen) == list(range(48))
    again = build_pretrain_loader(wds_config(shards, workers=2), 2, 0, rank=0, world_size=2)
    assert [lab for lab, *_ in epoch_batches(again, 1)] != [lab for lab, *_ in epoch_batches(again, 0)]


def test_a_sample_gets_the_same_crop_and_mask_on_any_rank_or_worker(shards):
    def by_label(world_size, workers):
        out = {}
        for rank in range(world_size):
            loader = build_pretrain_loader(wds_config(shards, workers=workers), 2, 7, rank, world_size, mask_patches=4)
            for labels, images, seeds, noise in epoch_batches(loader, 3):
                for i, label in enumerate(labels):
                    out[label] = (images[i], int(seeds[i]), noise[i])
        return out

    one, many = by_label(1, 0), by_label(2, 2)
    assert sorted(one) == sorted(many) == list(range(48))
    for label in one:
        assert torch.equal(one[label][0], many[label][0]) and one[label][1] == many[label][1]
        assert torch.equal(one[label][2], many[label][2])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_exactly_the_rest_of_the_epoch(shards, workers):
    loader = build_pretrain_loader(wds_config(shards, workers=workers), 4, 1, mask_patches=4)
    full = epoch_batches(loader, 2)
    assert len(full) == len(loader) == 12
    for start in (1, 5):
        rest = epoch_batches(loader, 2, start=start)
        assert [b[0] for b in rest] == [b[0] for b in full[start:]]
        assert all(torch.equal(a[1], b[1]) and torch.equal(a[3], b[3]) for a, b in zip(rest, full[start:]))


def test_shards_that_cannot_be_dealt_without_repeats_are_refused(tmp_path):
    few = write_shards(tmp_path / "few", n_samples=12, per_shard=6)  # 2 shards
    with pytest.raises(DataError, match="2 shards cannot be dealt to 2 process.*x 2 loader worker"):
        build_pretrain_loader(wds_config(few, workers=2), 2, 0, rank=0, world_size=2)


def test_brace_patterns_and_the_map_style_reader(shards):
    pattern = str(shards / "train-{000000..000007}.tar")
    ds = build_dataset(DataConfig(name="wds", path=pattern, img_size=8))
    assert len(ds) == 48 and ds.classes == [str(i) for i in range(48)]
    image, label = ds[13]
    assert label == 13 and torch.equal(image, torch.from_numpy(np.array(Image.open(io.BytesIO(png(13))))).permute(2, 0, 1))
    with pytest.raises(DataError, match="not a local file.*index"):
        build_dataset(DataConfig(name="wds", path="pipe:cat /x/train-{0..3}.tar", img_size=8))


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for split, n in (("train", 30), ("val", 9)):
        for c, name in enumerate(("cat", "dog", "emu")):
            (root / split / name).mkdir(parents=True)
            for i in range(n // 3):
                (root / split / name / f"{i}.png").write_bytes(png(100 * c + i + (1000 if split == "val" else 0)))
    return root


def test_pack_writes_shards_that_read_back_as_the_imagefolder(imagefolder, tmp_path, capsys):
    from deepmim.cli.main import main
    from deepmim.data import ImageFolder

    assert main(["data", "pack", str(imagefolder), "--out", str(tmp_path / "wds"), "--shard-size", "4"]) == 0
    assert "train: 30 images in 8 shard(s)" in capsys.readouterr().out
    index = json.loads((tmp_path / "wds" / "train.json").read_text())
    assert [s["nsamples"] for s in index["shardlist"]] == [4] * 7 + [2] and index["classes"] == ["cat", "dog", "emu"]
    for split in ("train", "val"):
        packed = build_dataset(DataConfig(name="wds", path=str(tmp_path / "wds"), split=split))
        folder = ImageFolder(str(imagefolder), split)
        assert packed.classes == folder.classes and len(packed) == len(folder)
        mine = sorted((int(label), image.flatten().tolist()) for image, label in (packed[i] for i in range(len(packed))))
        theirs = sorted((label, image.flatten().tolist()) for image, label in (folder[i] for i in range(len(folder))))
        assert mine == theirs
    first = [packed.targets[i] for i in range(9)]
    assert first != sorted(first)  # shuffled: shards mix the classes
    assert main(["data", "bench", "data.name=wds", f"data.path={tmp_path / 'wds'}", "data.img_size=8",
                 "data.num_workers=0", "train.batch_size=4", "--batches", "3", "--warmup", "1"]) == 0
    assert "images/s" in capsys.readouterr().out


@pytest.mark.slow
def test_pretraining_on_shards_resumes_exactly(imagefolder, tmp_path):
    from deepmim.tasks.data import pack_imagefolder
    from deepmim.tasks.pretrain import run_pretrain
    from tests.test_training import assert_same_weights, final_weights, tiny_pretrain_config

    pack_imagefolder(str(imagefolder), str(tmp_path / "wds"), shard_size=4)

    def config(out, **train):
        cfg = tiny_pretrain_config(out, batch_size=4, **train)
        cfg.data = DataConfig(name="wds", path=str(tmp_path / "wds"), img_size=16, num_workers=2, shuffle_buffer=8)
        return cfg

    run_pretrain(config(tmp_path / "full"))  # 8 shards / 2 workers: 4 shards, >= 14 samples -> 3 batches a worker
    run_pretrain(config(tmp_path / "cut", max_steps=4))  # stops mid-epoch (6 steps an epoch)
    run_pretrain(config(tmp_path / "cut", resume="auto"))
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "cut"))
    rows = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "epoch"] == [6, 12]


# ----------------------------------------------------------------------------- Hugging Face datasets


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory, imagefolder):
    datasets = pytest.importorskip("datasets")
    from deepmim.data import ImageFolder

    root = tmp_path_factory.mktemp("hf")
    splits = {}
    for split, name in (("train", "train"), ("val", "validation")):
        folder = ImageFolder(str(imagefolder), split)
        features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=folder.classes)})
        splits[name] = datasets.Dataset.from_dict(
            {"img": [path for path, _ in folder.samples], "y": [label for _, label in folder.samples]}, features=features)
    dd = datasets.DatasetDict(splits)
    dd.save_to_disk(str(root / "saved"))
    (root / "parquet" / "data").mkdir(parents=True)
    for name, ds in dd.items():
        ds.to_parquet(str(root / "parquet" / "data" / f"{name}-00000-of-00001.parquet"))
    return root, ImageFolder(str(imagefolder), "train")


@pytest.mark.parametrize("layout", ["saved", "parquet"])
def test_hf_datasets_read_as_their_source(hf_data, layout, monkeypatch, tmp_path):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    root, folder = hf_data
    cfg = DataConfig(name="hf", path=str(root / layout), image_key="img", label_key="y", img_size=8, num_workers=0)
    ds = build_dataset(cfg)
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 30
    for i in (0, 17, 29):
        image, label = ds[i]
        assert label == folder[i][1] and torch.equal(image, folder[i][0])
    assert len(build_dataset(cfg, "val")) == 9  # "val" finds the "validation" split
    seen = []
    for rank in range(2):  # map-style: the seeded sampler shards it, as ImageFolder
        loader = build_pretrain_loader(cfg, 3, 0, rank=rank, world_size=2)
        loader.set_epoch(0)
        seen += [int(x) for b in loader for x in b.labels]
    assert len(seen) == 30 and sorted(seen) == sorted(folder.targets)
    with pytest.raises(DataError, match="data.image_key='image' is not a column"):
        build_dataset(DataConfig(name="hf", path=str(root / layout)))
