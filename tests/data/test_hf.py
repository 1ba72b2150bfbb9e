"""Hugging Face datasets (data.name=hf): read as their source, and pretraining on an image-only dataset."""

import pytest
import torch

from deepmim.config.schema import DataConfig
from deepmim.data import build_dataset, build_pretrain_loader
from deepmim.data.errors import DataError
from deepmim.data.labels import UNLABELLED
from tests.helpers.data import all_images


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
            {"img": [path for path, _ in folder.samples], "y": [label for _, label in folder.samples]},
            features=features,
        )
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
