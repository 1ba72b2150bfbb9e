"""Data loading: resumable sampling across ranks and workers, preflight errors, and masking noise that
depends on the sample, not on the batching."""

from __future__ import annotations

import pytest
import torch

from deepmim.config.schema import DataConfig
from deepmim.data import (
    DataError,
    EmbeddedShapes,
    ResumableSampler,
    SeededAugmentation,
    build_dataset,
    build_pretrain_loader,
    build_pretrain_transform,
)
from deepmim.tasks.pretrain import load_pretrain_config
from tests.helpers.data import MEAN, STD


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
    assert not torch.equal(
        next(iter(other_epoch)).noise, next(iter(build_pretrain_loader(cfg, 8, seed=5, mask_patches=16))).noise
    )


def test_data_path_on_embedded_data_is_an_error():
    with pytest.raises(DataError, match=r"data\.path='/data/imagenet' is set, but data\.name=embedded"):
        load_pretrain_config("demo", ["data.path=/data/imagenet"])
