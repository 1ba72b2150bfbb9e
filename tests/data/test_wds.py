"""WebDataset shards (data.name=wds): every sample once per epoch over ranks x workers, the same crop and
mask wherever a sample lands, exact resume, `deepmim data pack`, img2dataset's layout, and shards under
fault (wrong index, cut short, damaged, missing, broken label) ending in one paragraph naming the shard."""

import io
import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from deepmim.cli.main import main
from deepmim.config.schema import DataConfig
from deepmim.data import build_dataset, build_pretrain_loader
from deepmim.data.errors import DataError
from deepmim.data.labels import UNLABELLED
from deepmim.tasks.pretrain import run_pretrain
from tests.helpers.data import FORMATS, all_images, encoded, png
from tests.helpers.runs import assert_same_weights, final_weights, tiny_pretrain_config

wds = pytest.importorskip("webdataset")

TINY = [
    "model.preset=mae_vit_micro_p4_32",
    "model.encoder.img_size=16",
    "model.encoder.depth=2",
    "model.heads.0.block=2",
    "data.img_size=16",
    "train.batch_size=8",
    "train.epochs=1",
    "train.precision=fp32",
    "train.device=cpu",
    "train.progress=false",
    "train.plots=false",
    "train.tensorboard=false",
    "optim.warmup_epochs=0",
    "data.name=wds",
    "data.shuffle_buffer=4",
]


def pretrain_error(capsys, shards, tmp_path, *extra: str, workers: int = 0) -> str:
    """A tiny pre-training run on `shards`: exit code 2 and one paragraph, within seconds."""
    start = time.perf_counter()
    code = main(
        [
            "pretrain",
            *TINY,
            f"data.path={shards}",
            f"data.num_workers={workers}",
            f"train.output_dir={tmp_path / 'run'}",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.perf_counter() - start < 60
    assert "Traceback" not in "\n".join(err) and err[-1].startswith("deepmim pretrain: error: ")
    return err[-1]


def set_count(root, shard: int, count: int) -> None:
    index = json.loads((root / "train.json").read_text())
    index["shardlist"][shard]["nsamples"] = count
    (root / "train.json").write_text(json.dumps(index))


def test_an_index_that_counts_more_samples_than_a_shard_holds_stops_with_a_message(tmp_path, capsys):
    root = write_shards(tmp_path / "wds", n_samples=24, per_shard=6)
    set_count(root, 1, 60)  # 24 -> 78 samples promised: the epoch would end early, again and again
    err = pretrain_error(capsys, root, tmp_path)
    assert "train-000001.tar' holds 6 samples, its index says 60" in err and "deepmim data index" in err


def test_an_index_that_counts_fewer_samples_than_a_shard_holds_stops_with_a_message(tmp_path, capsys):
    root = write_shards(tmp_path / "wds", n_samples=24, per_shard=6)
    set_count(root, 2, 5)  # 23 samples: one batch of 23 reads every one
    err = pretrain_error(capsys, root, tmp_path, "train.batch_size=23", workers=1)  # raised in a loader worker
    assert "train-000002.tar' holds more samples than the 5 its index says" in err


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_a_damaged_shard_mid_epoch_stops_with_a_message(tmp_path, capsys, damage):
    root = write_shards(tmp_path / "wds", n_samples=24, per_shard=6)
    shard = root / "train-000003.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    err = pretrain_error(capsys, root, tmp_path)
    assert f"shard '{shard}' is damaged after its sample" in err and "re-pack it" in err


def test_a_missing_shard_is_named(tmp_path, capsys):
    root = write_shards(tmp_path / "wds", n_samples=24, per_shard=6)
    (root / "train-000002.tar").unlink()
    err = pretrain_error(capsys, root, tmp_path)
    assert f"lists shard '{root / 'train-000002.tar'}', which does not exist (1 of 4 missing)" in err


def test_a_corrupt_label_names_its_shard_and_sample(tmp_path, capsys):
    root = tmp_path / "wds"
    write_shards(root, n_samples=24, per_shard=6)
    with wds.TarWriter(str(root / "train-000001.tar")) as sink:  # the same samples, one label garbled
        for i in range(6, 12):
            sink.write({"__key__": f"s{i:05d}", "png": png(i), "cls": b"seven" if i == 8 else str(i).encode()})
    err = pretrain_error(capsys, root, tmp_path)
    assert "sample 's00008' of" in err and "train-000001.tar has the label b'seven', not a class number" in err


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
    return DataConfig(
        name="wds", path=str(root), img_size=8, num_workers=workers, shuffle_buffer=4, crop_scale_min=0.5, **kw
    )


def epoch_batches(loader, epoch, start=0):
    loader.set_epoch(epoch, start_batch=start)
    return [(b.labels.tolist(), b.images, b.seeds, b.noise) for b in loader]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("wds") / "shards")


def test_every_sample_once_per_epoch_over_ranks_and_workers(shards):
    seen = []
    for rank in range(2):
        loader = build_pretrain_loader(
            wds_config(shards, workers=2), batch_size=2, seed=0, rank=rank, world_size=2, mask_patches=4
        )
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
    assert label == 13 and torch.equal(
        image, torch.from_numpy(np.array(Image.open(io.BytesIO(png(13))))).permute(2, 0, 1)
    )
    with pytest.raises(DataError, match="not a local file.*index"):
        build_dataset(DataConfig(name="wds", path="pipe:cat /x/train-{0..3}.tar", img_size=8))


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
        mine = sorted(
            (int(label), image.flatten().tolist()) for image, label in (packed[i] for i in range(len(packed)))
        )
        theirs = sorted((label, image.flatten().tolist()) for image, label in (folder[i] for i in range(len(folder))))
        assert mine == theirs
    first = [packed.targets[i] for i in range(9)]
    assert first != sorted(first)  # shuffled: shards mix the classes
    assert (
        main(
            [
                "data",
                "bench",
                "data.name=wds",
                f"data.path={tmp_path / 'wds'}",
                "data.img_size=8",
                "data.num_workers=0",
                "train.batch_size=4",
                "--batches",
                "3",
                "--warmup",
                "1",
            ]
        )
        == 0
    )
    assert "images/s" in capsys.readouterr().out


@pytest.mark.slow
def test_pretraining_on_shards_resumes_exactly(imagefolder, tmp_path):
    from deepmim.tasks.data import pack_imagefolder
    from deepmim.tasks.pretrain import run_pretrain

    pack_imagefolder(str(imagefolder), str(tmp_path / "wds"), shard_size=4)

    def config(out, **train):
        cfg = tiny_pretrain_config(out, batch_size=4, **train)
        cfg.data = DataConfig(name="wds", path=str(tmp_path / "wds"), img_size=16, num_workers=2, shuffle_buffer=8)
        return cfg

    run_pretrain(config(tmp_path / "full"))  # 8 shards / 2 workers: 4 shards, >= 14 samples -> 3 batches a worker
    run_pretrain(config(tmp_path / "cut", max_steps=4))  # stops mid-epoch (6 steps an epoch)
    run_pretrain(config(tmp_path / "cut", resume="auto"))
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "cut"))
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "epoch"] == [6, 12]


def img2dataset_shards(root, n=18, per_shard=6):
    """Shards as img2dataset writes them: NNNN.<ext> + NNNN.json + NNNN.txt, no cls; jpg, png and webp mixed."""
    import webdataset as wds

    from deepmim.data.wds import write_index

    root.mkdir(parents=True)
    urls = []
    for shard in range(n // per_shard):
        url = root / f"train-{shard:06d}.tar"
        with wds.TarWriter(str(url)) as sink:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                ext = list(FORMATS)[i % 3]
                sink.write(
                    {
                        "__key__": f"{i:09d}",
                        ext: encoded(i, ext),
                        "txt": b"a caption",
                        "json": json.dumps({"url": f"http://example.com/{i}", "width": 12}).encode(),
                    }
                )
        urls.append(str(url))
    write_index(root / "train.json", urls, [per_shard] * len(urls))
    return root


def test_img2dataset_shards_pretrain_without_labels(tmp_path):
    pytest.importorskip("webdataset")
    root = img2dataset_shards(tmp_path / "shards")
    cfg = DataConfig(name="wds", path=str(root), img_size=8, num_workers=0, shuffle_buffer=4)
    images, labels = all_images(build_pretrain_loader(cfg, batch_size=3, seed=0, labels=None))
    assert images.shape == (18, 3, 8, 8) and set(labels.tolist()) == {UNLABELLED}
    mapped = build_dataset(cfg, labels=None)
    assert len(mapped) == 18 and mapped[4][1] == UNLABELLED and mapped[4][0].shape == (3, 12, 12)
    with pytest.raises(DataError, match="has no 'cls' entry .*'json', 'png', 'txt'.*learns or scores image classes"):
        build_dataset(cfg)[4]
    with pytest.raises(DataError, match="has no 'cls' entry"):
        loader = build_pretrain_loader(cfg, batch_size=3, seed=0)  # a labelled task's loader
        all_images(loader)
    # a whole pre-training run on them
    out = tmp_path / "run"
    run = tiny_pretrain_config(out, epochs=1, batch_size=3)
    run.data = DataConfig(name="wds", path=str(root), img_size=16, num_workers=0, shuffle_buffer=4)
    result = run_pretrain(run)
    assert result.finished and result.step == 6
