"""Pre-training on unlabelled images: a flat folder (data.name=images, searched at any depth), WebDataset
shards in img2dataset's layout (an image entry of any extension, json/txt beside it, no cls) and a Hugging
Face dataset with only an image column. Commands that need labels stop with a message saying why."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepmim.cli.main import main
from deepmim.config.schema import DataConfig, PretrainTrainConfig
from deepmim.data import build_dataset, build_pretrain_loader
from deepmim.data.errors import DataError
from deepmim.data.labels import UNLABELLED
from deepmim.tasks.pretrain import run_pretrain
from tests.conftest import save_tiny_pretrained
from tests.test_training import final_weights, tiny_pretrain_config

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encoded(value: int, ext: str, size: int = 12) -> bytes:
    rng = np.random.default_rng(value)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format=FORMATS[ext])
    return buffer.getvalue()


def all_images(loader, epoch=0):
    loader.set_epoch(epoch)
    batches = list(loader)
    return torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches])


@pytest.fixture
def flat_folder(tmp_path):
    """20 images of three formats, some in nested folders, with a text file and a hidden file beside them."""
    root = tmp_path / "photos"
    for i in range(20):
        folder = root / ("" if i < 8 else f"trip{i % 3}/day{i % 2}")
        folder.mkdir(parents=True, exist_ok=True)
        ext = list(FORMATS)[i % 3]
        (folder / f"img{i:02d}.{ext}").write_bytes(encoded(i, ext))
    (root / "notes.txt").write_text("not an image")
    (root / ".thumb.jpg").write_bytes(encoded(99, "jpg"))
    return root


def test_flat_image_folder_is_read_recursively_without_labels(flat_folder):
    cfg = DataConfig(name="images", path=str(flat_folder), img_size=8, num_workers=0)
    dataset = build_dataset(cfg, labels=None)
    assert len(dataset) == 20 and set(dataset.targets) == {UNLABELLED} and dataset.classes == []
    images, labels = all_images(build_pretrain_loader(cfg, batch_size=4, seed=0, labels=None))
    assert images.shape == (20, 3, 8, 8) and labels.tolist() == [UNLABELLED] * 20


def test_pretraining_on_a_flat_folder_runs_and_resumes_exactly(flat_folder, tmp_path):
    def config(out, **train):
        cfg = tiny_pretrain_config(out, epochs=2, batch_size=4, **train)
        cfg.data = DataConfig(name="images", path=str(flat_folder), img_size=16, num_workers=0)
        return cfg

    full = run_pretrain(config(tmp_path / "full"))
    assert full.finished and full.step == 10  # 20 images / 4 x 2 epochs
    run_pretrain(config(tmp_path / "part", max_steps=3))
    run_pretrain(config(tmp_path / "part", resume="auto"))
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_commands_that_need_labels_say_which_and_why(flat_folder, tmp_path, capsys):
    cfg = DataConfig(name="images", path=str(flat_folder), img_size=8, num_workers=0)
    with pytest.raises(DataError, match="without labels, but this command learns or scores image classes"):
        build_dataset(cfg)
    pretrained = save_tiny_pretrained(tmp_path / "pretrained.pt")
    code = main(["finetune", "--config", "finetune_demo", f"model.checkpoint={pretrained}", "data.name=images",
                 f"data.path={flat_folder}", "data.img_size=16", f"train.output_dir={tmp_path / 'ft'}",
                 "train.device=cpu", "data.num_workers=0"])
    err = capsys.readouterr().err
    assert code == 2 and "deepmim finetune: error:" in err and "fine-tuning" in err and "Traceback" not in err
    # the online probe is the one part of pre-training that needs labels
    probe = tiny_pretrain_config(tmp_path / "probe")
    probe.train = PretrainTrainConfig(**{**vars(probe.train), "online_probe": True})
    probe.data = DataConfig(name="images", path=str(flat_folder), img_size=16, num_workers=0)
    with pytest.raises(DataError, match="train.online_probe=true trains a classifier"):
        run_pretrain(probe)


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
                sink.write({"__key__": f"{i:09d}", ext: encoded(i, ext), "txt": b"a caption",
                            "json": json.dumps({"url": f"http://example.com/{i}", "width": 12}).encode()})
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


def test_hf_dataset_with_only_an_image_column_pretrains(tmp_path, flat_folder):
    datasets = pytest.importorskip("datasets")
    paths = sorted(str(p) for p in flat_folder.rglob("img*"))
    table = datasets.Dataset.from_dict({"image": paths}, features=datasets.Features({"image": datasets.Image()}))
    table.save_to_disk(str(tmp_path / "hf"))
    cfg = DataConfig(name="hf", path=str(tmp_path / "hf"), img_size=8, num_workers=0)
    dataset = build_dataset(cfg, labels=None)
    assert len(dataset) == 20 and dataset.targets == [UNLABELLED] * 20 and dataset[0][0].shape == (3, 12, 12)
    with pytest.raises(DataError, match="'label' is not a column .* this command learns or scores image classes"):
        build_dataset(cfg)
    with pytest.raises(DataError, match="'y' is not a column"):  # a label column asked for by name must exist
        build_dataset(DataConfig(name="hf", path=str(tmp_path / "hf"), label_key="y", img_size=8), labels=None)
    images, labels = all_images(build_pretrain_loader(cfg, batch_size=5, seed=0, labels=None))
    assert images.shape == (20, 3, 8, 8) and set(labels.tolist()) == {UNLABELLED}
