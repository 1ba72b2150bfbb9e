"""Reproducible, resumable pre-training data pipeline.

Three properties make a run restartable bit-for-bit and independent of worker count:
- the sample order depends only on (seed, epoch) and can start at any batch of an epoch
  (`ResumableSampler.set_start`), without loading the skipped samples;
- the augmentation of a sample depends only on (seed, epoch, index)
  (`SeededAugmentation`), not on which worker drew it or what it drew before;
- so does its mask: every item carries a per-sample seed (`Batch.seeds`) from which the
  collate draws its masking noise (`Batch.noise`, the one source of pre-training masks), so a
  sample gets the same mask whatever the batch size, accumulation or number of processes
  (1 process x 8 images == 2 processes x 4);
- an unreadable file in a training batch is replaced by another sample drawn from (seed, epoch,
  index), so batches stay full (Mixup/CutMix need even ones) and a resumed run sees the same
  replacement; `Batch.num_skipped` counts them. Evaluation loaders leave such files out instead.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import random
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from deepmim.config.schema import DataConfig
from deepmim.data.embedded import EmbeddedShapes
from deepmim.data.errors import DataError
from deepmim.data.folder import FlatImageFolder, ImageFolder
from deepmim.data.idx import IdxDataset
from deepmim.data.labels import CLASSES
from deepmim.data.transforms import PretrainTransform, build_eval_transform, build_pretrain_transform
from deepmim.data.workers import ignore_stop_signals
from deepmim.models.masking import noise_from_seeds

DATASET_NAMES = ("embedded", "imagefolder", "idx", "wds", "hf", "images")
_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. (seed, epoch, index); order matters."""
    state = 0
    for value in values:
        state = _splitmix64(state ^ (int(value) & _MASK64))
    return state >> 1


MASK_STREAM = 0x3A5C  # separates the mask seed from the augmentation seed of the same sample
STAND_IN_STREAM = 0x5B1D  # draws the sample that stands in for an unreadable one
MAX_STAND_INS = 64  # unreadable draws in a row before giving up: the data is mostly unreadable


class SeededAugmentation(Dataset):
    """Wraps a dataset of (uint8 image, label) so that `transform` randomness depends only on
    (seed, epoch, index). The global CPU RNG is forked, so callers' RNG state is untouched.
    Items are (image, label, sample_seed): the seed the loss uses for this sample's mask.

    The epoch lives in shared memory: `set_epoch` in the main process reaches persistent
    DataLoader workers too. An unreadable file (a `None` item) is replaced by another sample,
    drawn from (seed, epoch, index): items are (image, label, sample_seed, files_replaced).
    An ImageFolder with the pre-training transform decodes each file straight into its crop
    (`PretrainTransform.from_file`: reduced-size JPEG decoding when the crop allows it).
    """

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor], seed: int):
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        from deepmim.data.subset import ClassBalancedSubset

        folder = dataset.dataset if isinstance(dataset, ClassBalancedSubset) else dataset
        self.from_files = isinstance(folder, ImageFolder) and isinstance(transform, PretrainTransform)
        # PretrainTransform draws from torch's generator only; seeding Python's and numpy's as well (and
        # restoring them) would cost ~0.15 ms per item, a third of the demo's loading time
        self.torch_rng_only = isinstance(transform, PretrainTransform)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int, int]:
        source, replaced = index, 0
        while True:
            out = self.augment(None if self.from_files else self.dataset[source], index, source=source)
            if out is not None:
                return (*out, replaced)
            # an unreadable file: a deterministic other sample takes its place (augmented as `index`)
            if replaced == MAX_STAND_INS:
                raise DataError(
                    f"{MAX_STAND_INS} unreadable images in a row (the last at index {index}): most of "
                    f"the data cannot be read; check data.path and the warnings above"
                )
            replaced += 1
            source = mix_seed(self.seed, self.epoch, index, STAND_IN_STREAM, replaced) % len(self.dataset)

    def augment(
        self, item: Optional[tuple], index: int, epoch: Optional[int] = None, source: Optional[int] = None
    ) -> Optional[Tuple[torch.Tensor, int, int]]:
        """(image, label) of sample `index` -> (augmented image, label, mask seed), from (seed, epoch, index)
        alone (epoch: the shared one unless given; streamed data passes its own). Reading files straight
        into their crop (`from_files`), the file of sample `source` (default `index`) is read. None (an
        unreadable sample) stays None."""
        if item is None and not self.from_files:
            return None
        epoch = self.epoch if epoch is None else int(epoch)
        seed = mix_seed(self.seed, epoch, index)
        with torch.random.fork_rng(devices=[]):
            # CPU generator only: torch.manual_seed would also reseed (and leak into) CUDA RNGs.
            torch.default_generator.manual_seed(seed)
            if self.torch_rng_only:
                item = self._apply(index if source is None else source, item)
            else:  # timm's RandAugment / RandomErasing also draw from `random` and numpy: seed them too
                python_state, numpy_state = random.getstate(), np.random.get_state()
                random.seed(seed)
                np.random.seed(seed % 2**32)
                try:
                    item = self._apply(index if source is None else source, item)
                finally:
                    random.setstate(python_state)
                    np.random.set_state(numpy_state)
        if item is None:
            return None
        return item[0], item[1], mix_seed(self.seed, epoch, index, MASK_STREAM)

    def _apply(self, source: int, item):
        if self.from_files:
            return self.dataset.load_with(source, self.transform.from_file)
        return self.transform(item[0]), item[1]


class TransformedDataset(Dataset):
    """Applies a deterministic `transform` to each image (evaluation, cached features); None
    items (unreadable files) pass through as None for collate_skip_broken."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Optional[Tuple[torch.Tensor, int]]:
        item = self.dataset[index]
        if item is None:
            return None
        return self.transform(item[0]), int(item[1])


class ResumableSampler(Sampler[int]):
    """Per-epoch order from a generator seeded with (seed, epoch), sharded over ranks.

    Like DistributedSampler, rank r takes positions r, r + world_size, ... of the epoch
    order, so ranks are disjoint and equally long: drop_last=True drops the tail that does
    not split evenly, drop_last=False pads by repeating the start of the order.
    `set_start(k, batch_size)` skips this rank's first k batches of the current epoch (to
    resume mid-epoch); `set_epoch` resets it to 0. `len()` counts what `iter()` yields (the
    remainder after `set_start`); `samples_per_epoch` is the full per-rank epoch length.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_samples < 1:
            raise DataError("cannot sample from an empty dataset")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        if drop_last:
            self.samples_per_epoch = self.num_samples // world_size
        else:
            self.samples_per_epoch = math.ceil(self.num_samples / world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, batch_index: int, batch_size: int) -> None:
        """Begin the current epoch at this rank's batch `batch_index` (0 = from the start)."""
        start = int(batch_index) * int(batch_size)
        if batch_index < 0 or batch_size < 1 or start > self.samples_per_epoch:
            raise ValueError(
                f"cannot start at batch {batch_index} of size {batch_size}: "
                f"an epoch has {self.samples_per_epoch} samples on this rank"
            )
        self.start = start

    def epoch_order(self) -> List[int]:
        """All of this rank's indices for the current epoch, ignoring `set_start`."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.samples_per_epoch * self.world_size
        if total > len(order):
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.start :])

    def __len__(self) -> int:
        return self.samples_per_epoch - self.start


class Batch(NamedTuple):
    """A collated batch; `num_skipped` counts unreadable files: replaced by other samples in training
    batches (which stay full), dropped from evaluation batches."""

    images: torch.Tensor  # float (N, C, H, W), C = len(data.mean); N == 0 when every sample was unreadable
    labels: torch.Tensor  # int64 (N,)
    num_skipped: int
    seeds: Optional[torch.Tensor] = None  # int64 (N,) per-sample mask seeds (training loaders)
    noise: Optional[torch.Tensor] = None  # float (N, L) masking noise drawn from `seeds` (pre-training)


def collate_skip_broken(batch: Sequence[Optional[tuple]], num_patches: Optional[int] = None) -> Batch:
    """Stack (image, label[, sample_seed, files_replaced]) items, dropping `None` (unreadable) ones and
    counting them with the files replaced. With `num_patches`, also draw each sample's masking noise
    from its seed, here in the loader's workers: the training step then only copies it (pinned,
    asynchronously) to the device."""
    items = [item for item in batch if item is not None]
    num_skipped = len(batch) - len(items) + sum(int(item[3]) for item in items if len(item) > 3)
    if not items:
        return Batch(torch.empty(0, 3, 0, 0), torch.empty(0, dtype=torch.int64), num_skipped)
    images = default_collate([item[0] for item in items])  # shared memory inside workers
    labels = torch.tensor([int(item[1]) for item in items], dtype=torch.int64)
    seeds = torch.tensor([int(item[2]) for item in items], dtype=torch.int64) if len(items[0]) > 2 else None
    noise = None
    if num_patches is not None and seeds is not None:
        noise = noise_from_seeds(seeds, num_patches)
    return Batch(images, labels, num_skipped, seeds, noise)


def validate_data_config(cfg: DataConfig, require_path: bool = True) -> None:
    """Reject unusable data settings before anything is loaded or built (`require_path=False`: a recipe
    that leaves data.path to the command line passes)."""
    if cfg.name not in DATASET_NAMES:
        raise DataError(f"unknown data.name '{cfg.name}'; choose one of: {', '.join(DATASET_NAMES)}")
    if cfg.name == "embedded" and cfg.path:
        raise DataError(
            f"data.path='{cfg.path}' is set, but data.name=embedded (the built-in shapes) reads no "
            f"files: set data.name=imagefolder (an ImageNet-style folder), data.name=idx (MNIST / "
            f"Fashion-MNIST IDX files), data.name=wds or data.name=hf to train on it, or remove data.path"
        )
    if cfg.name != "embedded" and not cfg.path and require_path:
        hint = {
            "imagefolder": "an ImageNet-style folder (root/train/<class>/*.jpg)",
            "images": "a folder of images (searched at any depth, no labels: for pre-training)",
            "idx": "a folder with MNIST/Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...)",
            "wds": "a folder 'deepmim data pack' wrote, a shard index (.json) or shards ('train-{000000..000099}.tar')",
            "hf": "a folder saved with datasets' save_to_disk, or parquet files",
        }[cfg.name]
        raise DataError(f"data.path is required for data.name='{cfg.name}'; set data.path to {hint}")
    if len(cfg.mean) not in (1, 3) or len(cfg.std) != len(cfg.mean) or any(s <= 0 for s in cfg.std):
        raise DataError(
            f"data.mean and data.std need 3 values (colour) or 1 (grey) with std > 0, got mean={cfg.mean}, "
            f"std={cfg.std}"
        )
    if not 0.0 < cfg.crop_scale_min <= 1.0:
        raise DataError(f"data.crop_scale_min must be in (0, 1], got {cfg.crop_scale_min}")
    if cfg.num_workers < 0:
        raise DataError(f"data.num_workers must be >= 0, got {cfg.num_workers}")
    for key in ("img_size", "num_samples", "shuffle_buffer"):
        if getattr(cfg, key) < 1:
            raise DataError(f"data.{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.max_samples is not None and cfg.max_samples < 1:
        raise DataError(f"data.max_samples must be a positive number of images (or null: all), got {cfg.max_samples}")


def build_dataset(cfg: DataConfig, split: Optional[str] = None, labels: Optional[str] = CLASSES) -> Dataset:
    """The raw dataset named by `cfg` (items: uint8 (C, H, W) image and int label, or None), cut to
    `cfg.max_samples` images (a fixed class-balanced subset) when that is set. `labels`: why the caller
    needs labels (data without them stops with it), or None: unlabelled data gives UNLABELLED (data/labels.py)."""
    validate_data_config(cfg)
    dataset = _full_dataset(cfg, split or cfg.split, labels)
    if cfg.max_samples is not None and cfg.max_samples < len(dataset):
        from deepmim.data.subset import ClassBalancedSubset

        return ClassBalancedSubset(dataset, cfg.max_samples)
    return dataset


def _full_dataset(cfg: DataConfig, split: str, labels: Optional[str] = CLASSES) -> Dataset:
    if cfg.name == "embedded":
        return EmbeddedShapes(cfg.num_samples, img_size=cfg.img_size, split=split)
    path = os.path.expanduser(cfg.path)
    if cfg.name == "imagefolder":
        return ImageFolder(path, split=split, strict=cfg.strict)
    if cfg.name == "images":
        return FlatImageFolder(path, split=split, strict=cfg.strict, labels=labels)
    if cfg.name == "wds":
        from deepmim.data.wds import TarShardDataset, resolve_shards

        return TarShardDataset(resolve_shards(path, split), cfg.image_key, cfg.label_key, cfg.strict, labels)
    if cfg.name == "hf":
        from deepmim.data.hf import HFImageDataset

        return HFImageDataset(path, split, cfg.image_key, cfg.label_key, cfg.strict, labels)
    return IdxDataset(path, split=split)


def preview_images(cfg: DataConfig, n_images: int) -> torch.Tensor:
    """The first n readable images of the validation split (the train split where there is none), with the
    evaluation transform: the fixed images reconstruction pictures show."""
    try:
        dataset = build_dataset(cfg, split="val", labels=None)
    except ValueError:
        dataset = build_dataset(cfg, labels=None)
    transform = build_eval_transform(cfg.img_size, cfg.mean, cfg.std)
    items = (dataset[i] for i in range(len(dataset)))
    images = list(itertools.islice((transform(item[0]) for item in items if item is not None), n_images))
    return torch.stack(images)


class PretrainLoader(DataLoader):
    """A DataLoader over SeededAugmentation + ResumableSampler, with one call per epoch.

    `.dataset` is the SeededAugmentation, `.sampler` the ResumableSampler,
    `.raw_dataset` the uint8 dataset underneath. Batches are `Batch` tuples.
    """

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Call before iterating epoch `epoch`; `start_batch` > 0 resumes mid-epoch."""
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        if start_batch:
            self.sampler.set_start(start_batch, self.batch_size)

    @property
    def raw_dataset(self) -> Dataset:
        return self.dataset.dataset


def build_pretrain_loader(
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    split: Optional[str] = None,
    mask_patches: Optional[int] = None,
    labels: Optional[str] = CLASSES,
) -> PretrainLoader:
    """The seeded, resumable training loader for `split` (default cfg.split) with `transform`
    (default: the pre-training augmentation); call `loader.set_epoch(e)` before each epoch.
    `mask_patches`: batches carry per-sample masking noise over that many patches (Batch.noise).
    `labels`: why labels are needed, or None (pre-training): unlabelled images get UNLABELLED."""
    validate_data_config(cfg)
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    if transform is None:
        transform = build_pretrain_transform(cfg.img_size, cfg.mean, cfg.std, cfg.crop_scale_min, cfg.hflip)
    if cfg.name == "wds":  # streamed shards (data/wds.py): same per-sample seeds, shard-dealt over ranks and workers
        from deepmim.data.wds import build_wds_loader

        return build_wds_loader(
            cfg,
            batch_size,
            seed,
            rank,
            world_size,
            SeededAugmentation(None, transform, seed),
            functools.partial(collate_skip_broken, num_patches=mask_patches),
            split,
            labels,
        )
    raw = build_dataset(cfg, split, labels)
    dataset = SeededAugmentation(raw, transform, seed)
    sampler = ResumableSampler(len(raw), seed, shuffle=True, rank=rank, world_size=world_size, drop_last=drop_last)
    if drop_last and sampler.samples_per_epoch < batch_size:
        raise DataError(
            f"the dataset has {len(raw)} samples ({sampler.samples_per_epoch} per process), fewer than one "
            f"batch of {batch_size}; lower the batch size or use more data"
            + (" (data.num_samples)" if cfg.name == "embedded" else "")
        )
    workers = cfg.num_workers
    return PretrainLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=functools.partial(collate_skip_broken, num_patches=mask_patches),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        # Own generator: creating iterators must not consume the global RNG (drop path draws from it,
        # and checkpoints restore it for an exact resume).
        generator=torch.Generator().manual_seed(mix_seed(seed, 0x10AD)),
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
    )
