"""Data under fault: WebDataset shards that disagree with their index, are cut short, damaged, missing or
carry a broken label, and image folders with symbolic-link cycles, end in one paragraph naming the shard
or folder (exit code 2), never in a hang or a silently repeated listing."""
import json
import os
import time

import pytest

from deepmim.cli.main import main
from deepmim.data.folder import ImageFolder, list_images
from tests.test_streaming import png, write_shards

wds = pytest.importorskip("webdataset")

TINY = ["model.preset=mae_vit_micro_p4_32", "model.encoder.img_size=16", "model.encoder.depth=2",
        "model.heads.0.block=2", "data.img_size=16", "train.batch_size=8", "train.epochs=1", "train.precision=fp32",
        "train.device=cpu", "train.progress=false", "train.plots=false", "train.tensorboard=false",
        "optim.warmup_epochs=0", "data.name=wds", "data.shuffle_buffer=4"]


def pretrain_error(capsys, shards, tmp_path, *extra: str, workers: int = 0) -> str:
    """A tiny pre-training run on `shards`: exit code 2 and one paragraph, within seconds."""
    start = time.perf_counter()
    code = main(["pretrain", *TINY, f"data.path={shards}", f"data.num_workers={workers}",
                 f"train.output_dir={tmp_path / 'run'}", *extra])
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


def _image_folder(root):
    from PIL import Image

    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "train" / name / f"{i}.png")
    return root


def test_symlink_cycles_in_a_class_folder_are_listed_once(tmp_path):
    root = _image_folder(tmp_path / "folder")
    os.symlink(".", root / "train" / "a" / "l1")  # two links to the folder itself: os.walk would never end
    os.symlink(".", root / "train" / "a" / "l2")
    os.symlink("../a", root / "train" / "b" / "again")  # another class's folder: its images would count twice
    dataset = ImageFolder(str(root))
    assert len(dataset) == 6 and dataset.targets == [0, 0, 0, 1, 1, 1]
    assert sorted(os.path.relpath(p, root) for p in list_images(str(root / "train"))) == [
        f"train/{c}/{i}.png" for c in "ab" for i in range(3)]
