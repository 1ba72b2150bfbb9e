"""`data.name=wds`: WebDataset tar shards, read with the `webdataset` package (optional extra).

`data.path` is a folder `deepmim data pack` wrote (its `<split>.json` index names the shards), an index
file (`.json`, wids' layout: {"shardlist": [{"url", "nsamples"}], "classes": [...]}) whose urls may be
local paths or `pipe:` commands (`pipe:aws s3 cp s3://bucket/train-000000.tar -`), or a brace pattern
of local shards (`/data/train-{000000..000127}.tar`, `::` joins patterns; `{split}` is replaced by
data.split), whose samples are counted once from the tar headers.

Training streams the shards (`WdsLoader`). Per epoch the shards are permuted (seed, epoch) and dealt to
the ranks x DataLoader workers round-robin, so no sample is read twice; each worker reads its shards in
order through a seeded shuffle buffer (data.shuffle_buffer) and yields the same number of full batches
(floor(shards / (ranks x workers)) of the smallest shards' samples each: an uneven remainder is left for
that epoch, as drop_last). A sample's index is its position in the shard list, so augmentation and mask
noise come from (seed, epoch, index) as for every other dataset.

Resume is exact: the stream of each worker is a function of (seed, epoch, its slot), and a run resumed
mid-epoch replays it up to the batch it stopped at by reading the samples before it, without decoding or
augmenting them (I/O of the part of the epoch already done; none at an epoch boundary).

Evaluation, probes and pictures index local shards directly (`TarShardDataset`, from the tar headers).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from deepmim.data.errors import DataError
from deepmim.data.folder import _to_rgb
from deepmim.data.labels import CLASSES, UNLABELLED, missing_labels

INDEX_VERSION = 1
IMAGE_KEYS = "jpg;jpeg;png;webp;bmp;tif;tiff"
LABEL_KEY = "cls"
_SHARD_STREAM, _BUFFER_STREAM = 0x5A4D, 0xB0FF
SPLIT_ALIASES = {"val": ("val", "validation"), "validation": ("validation", "val"), "test": ("test",)}


def webdataset():
    try:
        import webdataset as wds
    except ImportError as err:
        raise DataError("data.name=wds needs the webdataset package: pip install 'deepmim[wds]'") from err
    return wds


# ----------------------------------------------------------------------------- the shard list


@dataclass
class ShardList:
    """The shards of one split, their sample counts and (when the index has them) the class names."""

    urls: List[str]
    counts: List[int]
    classes: Optional[List[str]] = None

    @property
    def offsets(self) -> List[int]:
        """Index of each shard's first sample."""
        out, total = [], 0
        for n in self.counts:
            out.append(total)
            total += n
        return out

    @property
    def total(self) -> int:
        return sum(self.counts)


def is_local(url: str) -> bool:
    return not url.startswith(("pipe:", "http:", "https:", "s3:", "gs:", "ais:", "hf:"))


def expand_pattern(pattern: str) -> List[str]:
    """Brace patterns (webdataset's expansion), several joined with '::'."""
    from braceexpand import braceexpand

    return [url for part in pattern.split("::") for url in braceexpand(part)]


def read_index(path: Path) -> ShardList:
    data = json.loads(Path(path).read_text())
    urls, counts = [], []
    for entry in data.get("shardlist", []):
        url = entry["url"]
        if is_local(url) and not os.path.isabs(url):
            url = str(Path(path).parent / url)
        urls.append(url)
        counts.append(int(entry["nsamples"]))
    if not urls:
        raise DataError(f"shard index '{path}' lists no shards")
    return ShardList(urls, counts, data.get("classes"))


def write_index(
    path: Path, urls: Sequence[str], counts: Sequence[int], classes: Optional[List[str]] = None, name: str = ""
) -> Path:
    """A wids-style index; urls next to the index file are written relative to it."""
    base = Path(path).parent.resolve()
    entries = []
    for url, n in zip(urls, counts):
        if is_local(url) and Path(url).resolve().parent == base:
            url = Path(url).name
        entries.append({"url": url, "nsamples": int(n)})
    body = {"wids_version": INDEX_VERSION, "name": name, "shardlist": entries}
    if classes is not None:
        body["classes"] = list(classes)
    Path(path).write_text(json.dumps(body, indent=1) + "\n")
    return Path(path)


def resolve_shards(path: str, split: str) -> ShardList:
    """data.path (folder, index or pattern) and data.split -> the split's ShardList."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        for name in SPLIT_ALIASES.get(split, (split,)):
            index = Path(path) / f"{name}.json"
            if index.is_file():
                return read_index(index)
        raise DataError(
            f"data.path '{path}' has no '{split}.json' shard index; write one with 'deepmim data pack' "
            f"or 'deepmim data index', or give a brace pattern of the shards"
        )
    path = path.replace("{split}", split)
    if path.endswith(".json"):
        if not os.path.isfile(path):
            raise DataError(f"shard index '{path}' does not exist")
        return read_index(Path(path))
    urls = expand_pattern(path)
    remote = [u for u in urls if not is_local(u)]
    if remote:
        raise DataError(
            f"'{remote[0]}' is not a local file: give data.path an index (.json) that lists the shards "
            f"with their sample counts (deepmim data index PATTERN --out index.json)"
        )
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise DataError(
            f"data.path '{path}': shard '{missing[0]}' does not exist ({len(missing)} of {len(urls)} missing)"
        )
    return ShardList(urls, [len(tar_samples(u)) for u in urls])


def count_samples(url: str) -> int:
    """Samples in any shard webdataset can open (local, pipe:, ...), by reading it through."""
    return sum(1 for _ in webdataset().tariterators.tarfile_samples([{"url": url}]))


# ----------------------------------------------------------------------------- decoding


def sample_image(sample: Dict[str, bytes], image_key: str) -> bytes:
    for key in image_key.split(";"):
        if key in sample:
            return sample[key]
    raise DataError(
        f"sample '{sample.get('__key__')}' in {sample.get('__url__')} has no {image_key!r} entry "
        f"(it has {sorted(k for k in sample if not k.startswith('__'))}); set data.image_key"
    )


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 (3, H, W), every PIL mode converted as ImageFolder does."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        array = np.array(_to_rgb(image), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def decode_label(value, sample: Optional[Dict[str, bytes]] = None) -> int:
    """A label entry (b'3') as an int; anything else stops with the shard and the sample named."""
    try:
        return int(value.decode() if isinstance(value, bytes) else value)
    except (ValueError, TypeError, UnicodeDecodeError):
        where = f"sample '{sample.get('__key__')}' of {sample.get('__url__')}" if sample else "a sample"
        raise DataError(
            f"{where} has the label {bytes(value)[:40]!r}, not a class number; fix or re-pack the "
            f"shard, or set data.label_key to the entry that holds the class numbers"
        ) from None


class Decoder:
    """A raw sample -> (uint8 image, label), or None for an unreadable image (skipped and counted, unless strict).
    Entries other than the image and the label (img2dataset's json and txt) are ignored. A sample without the
    label entry gets UNLABELLED when `labels` is None (pre-training), else stops with `labels`, the reason."""

    def __init__(
        self, image_key: Optional[str], label_key: Optional[str], strict: bool, labels: Optional[str] = CLASSES
    ):
        self.image_key, self.label_key, self.strict = image_key or IMAGE_KEYS, label_key or LABEL_KEY, strict
        self.labels = labels

    def __call__(self, sample: Dict[str, bytes]):
        try:
            image = decode_image(sample_image(sample, self.image_key))
        except DataError:
            raise
        except Exception as exc:  # corrupt or truncated bytes
            if self.strict:
                raise DataError(
                    f"cannot decode sample '{sample.get('__key__')}' of {sample.get('__url__')}: {exc}; "
                    f"set data.strict=false to skip unreadable images"
                ) from exc
            return None
        return image, self.label(sample)

    def label(self, sample: Dict[str, bytes]) -> int:
        if self.label_key in sample:
            return decode_label(sample[self.label_key], sample)
        if self.labels is None:
            return UNLABELLED
        raise missing_labels(
            f"sample '{sample.get('__key__')}' of {sample.get('__url__')} has no "
            f"'{self.label_key}' entry (it has {sorted(k for k in sample if not k.startswith('__'))})",
            self.labels,
        )


# ----------------------------------------------------------------------------- map-style: local shards


def tar_samples(path: str) -> List[Dict[str, Tuple[int, int]]]:
    """{extension: (offset, size)} of every sample of a local tar file, in order, from its headers."""
    wds = webdataset()
    samples: List[Dict[str, Tuple[int, int]]] = []
    keys: List[str] = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = wds.tariterators.base_plus_ext(member.name)
            if key is None or key.startswith("__"):
                continue
            if not keys or keys[-1] != key:
                keys.append(key)
                samples.append({"__key__": key})
            samples[-1][ext.lower()] = (member.offset_data, member.size)
    return samples


class TarShardDataset(Dataset):
    """Random access to local shards (index i = the i-th sample of the shard list): evaluation and probes."""

    def __init__(
        self,
        shards: ShardList,
        image_key: Optional[str] = None,
        label_key: Optional[str] = None,
        strict: bool = False,
        labels: Optional[str] = CLASSES,
    ):
        local = [u for u in shards.urls if not is_local(u) or not os.path.isfile(u)]
        if local:
            raise DataError(
                f"'{local[0]}' is not a local file: evaluation, probes and pictures read shards by index; "
                f"copy the split's shards to a local folder (or use data.name=hf / imagefolder for it)"
            )
        self.shards = shards
        self.entries = [(url, entry) for url in shards.urls for entry in tar_samples(url)]
        if len(self.entries) != shards.total:
            raise DataError(f"the shards hold {len(self.entries)} samples, their index says {shards.total}")
        self.decode = Decoder(image_key, label_key, strict, labels)
        self._files: Dict[Tuple[int, str], int] = {}
        self._targets: Optional[List[int]] = None
        self._classes = shards.classes

    def __len__(self) -> int:
        return len(self.entries)

    def raw(self, index: int) -> Dict[str, bytes]:
        url, entry = self.entries[index]
        key = (os.getpid(), url)  # pread on a descriptor of this process: forked workers share no offset
        fd = self._files.get(key)
        if fd is None:
            fd = self._files[key] = os.open(url, os.O_RDONLY)
        out = {"__key__": entry["__key__"], "__url__": url}
        for ext, where in entry.items():
            if ext != "__key__":
                out[ext] = os.pread(fd, where[1], where[0])
        return out

    def __getitem__(self, index: int):
        return self.decode(self.raw(index))

    @property
    def targets(self) -> List[int]:
        if self._targets is None:
            self._targets = [self.decode.label(self.raw(i)) for i in range(len(self))]
        return self._targets

    @property
    def classes(self) -> List[str]:
        if self._classes is None:
            self._classes = [str(c) for c in range(max(self.targets, default=UNLABELLED) + 1)]
        return self._classes

    def __getstate__(self):  # open files stay in the process that opened them
        return {**self.__dict__, "_files": {}}


# ----------------------------------------------------------------------------- streaming: training


def shard_slots(num_shards: int, seed: int, epoch: int, slots: int) -> List[List[int]]:
    """The shards each of `slots` (rank x worker) readers gets in `epoch`: a seeded permutation dealt round-robin."""
    order = torch.randperm(num_shards, generator=torch.Generator().manual_seed(_mix(seed, epoch, _SHARD_STREAM)))
    order = order.tolist()
    return [order[s::slots] for s in range(slots)]


def _mix(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (the shard order and shuffle buffer of an epoch's reader)."""
    digest = hashlib.blake2b(",".join(str(int(v)) for v in values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer: keep `size` items, yield a random one as each new one arrives, then the rest."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = rng.randrange(size)
        buffer[k], item = item, buffer[k]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class WdsStream(IterableDataset):
    """The epoch's stream of one DataLoader worker of one rank: (augmented image, label, mask seed) items."""

    def __init__(
        self,
        shards: ShardList,
        augment,
        decoder: Decoder,
        seed: int,
        rank: int,
        world_size: int,
        workers: int,
        batch_size: int,
        shuffle_buffer: int,
    ):
        self.shards, self.augment, self.decoder = shards, augment, decoder
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers, self.batch_size, self.shuffle_buffer = max(workers, 1), batch_size, shuffle_buffer
        slots = self.world_size * self.workers
        if len(shards.urls) < slots:
            raise DataError(
                f"{len(shards.urls)} shards cannot be dealt to {world_size} process(es) x {self.workers} "
                f"loader worker(s) without repeating one: write more, smaller shards (deepmim data pack "
                f"--shard-size) or lower data.num_workers"
            )
        per_slot = len(shards.urls) // slots
        smallest = sum(sorted(shards.counts)[:per_slot])  # what every slot reads at least, in any epoch
        self.batches_per_slot = smallest // batch_size
        if self.batches_per_slot == 0:
            raise DataError(
                f"each loader worker reads {per_slot} shard(s) of at least {smallest} samples per epoch, "
                f"fewer than a batch of {batch_size}: lower the batch size or data.num_workers"
            )
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.batches_per_slot * self.workers

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # The DataLoader takes batch j from worker j % workers; resumed at batch k, worker w plays the part of
        # worker (w + k) % workers, and skips the batches that part had already given.
        role = (worker + self.start_batch) % self.workers
        done = (self.start_batch - role + self.workers - 1) // self.workers if self.start_batch > role else 0
        slot = self.rank * self.workers + role
        mine = shard_slots(len(self.shards.urls), self.seed, self.epoch, self.world_size * self.workers)[slot]
        rng = random.Random(_mix(self.seed, self.epoch, slot, _BUFFER_STREAM))
        stream = shuffled(self._raw(mine), self.shuffle_buffer, rng)
        quota = self.batches_per_slot * self.batch_size
        for position, (index, sample) in enumerate(stream):
            if position >= quota:
                break
            if position < done * self.batch_size:
                continue  # replayed, not decoded
            item = self.decoder(sample)
            yield self.augment.augment(item, index, self.epoch)

    def _raw(self, shards: List[int]) -> Iterator[Tuple[int, Dict[str, bytes]]]:
        offsets = self.shards.offsets
        for shard in shards:
            for position, sample in enumerate(checked_samples(self.shards.urls[shard], self.shards.counts[shard])):
                yield offsets[shard] + position, sample


def checked_samples(url: str, expected: int) -> Iterator[Dict[str, bytes]]:
    """The samples of one shard, held to the count its index gives: a shard that ends early, holds more,
    is missing or is damaged stops the epoch with a message naming it (a short shard would otherwise end
    every epoch early, and the run would never reach its next epoch)."""
    wds = webdataset()
    count = 0
    try:
        for sample in wds.tariterators.tarfile_samples([{"url": url}]):
            if count == expected:
                raise DataError(
                    f"shard '{url}' holds more samples than the {expected} its index says; rewrite the "
                    f"index (deepmim data index)"
                )
            count += 1
            yield sample
    except DataError:
        raise
    except FileNotFoundError as err:
        raise DataError(
            f"shard '{url}' does not exist ({err.strerror}); restore it, or rewrite the index without "
            f"it (deepmim data index)"
        ) from None
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        reason = str(err.args[0] if err.args else err).split(" @ ")[0]
        raise DataError(
            f"shard '{url}' is damaged after its sample {count} ({type(err).__name__}: {reason}); re-pack "
            f"it (deepmim data pack), or rewrite the index without it (deepmim data index)"
        ) from None
    if count != expected:
        raise DataError(
            f"shard '{url}' holds {count} samples, its index says {expected}; rewrite the index "
            f"(deepmim data index) or restore the shard"
        )


class _ShardInfo:
    """What the Trainer and the online probe read off `loader.raw_dataset`: the size and the classes."""

    def __init__(self, shards: ShardList, classes: Optional[List[str]]):
        self.shards, self.classes = shards, classes

    def __len__(self) -> int:
        return self.shards.total


class WdsLoader:
    """An EpochLoader (training/loop.py) over WebDataset shards: `set_epoch(epoch, start_batch)`, `len`, iter."""

    def __init__(self, stream: WdsStream, collate: Callable, workers: int, classes: Optional[List[str]]):
        self.stream, self.collate, self.workers = stream, collate, workers
        self.batch_size = stream.batch_size
        self.raw_dataset = _ShardInfo(stream.shards, classes)
        self.dataset = self.raw_dataset

    def __len__(self) -> int:
        return len(self.stream)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"cannot start at batch {start_batch}: an epoch has {len(self)} batches on this rank")
        self.stream.epoch, self.stream.start_batch = int(epoch), int(start_batch)

    def __iter__(self):
        # Fresh workers each epoch: they take the epoch and start batch with the stream.
        from deepmim.data.workers import ignore_stop_signals

        loader = DataLoader(
            self.stream,
            batch_size=self.batch_size,
            drop_last=True,
            num_workers=self.workers,
            worker_init_fn=ignore_stop_signals if self.workers else None,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
        )
        return iter(loader)


def build_wds_loader(
    cfg,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    augment,
    collate: Callable,
    split: Optional[str] = None,
    labels: Optional[str] = CLASSES,
) -> WdsLoader:
    """The streamed training loader; `augment` (a SeededAugmentation) and `collate` come from data/loader.py."""
    if cfg.max_samples is not None:
        raise DataError(
            "data.max_samples is not offered for streamed shards (data.name=wds): pack the subset "
            "you want (deepmim data pack) or list fewer shards"
        )
    shards = resolve_shards(cfg.path, split or cfg.split)
    missing = [u for u in shards.urls if is_local(u) and not os.path.isfile(u)]
    if missing:
        raise DataError(
            f"data.path '{cfg.path}' lists shard '{missing[0]}', which does not exist ({len(missing)} of "
            f"{len(shards.urls)} missing); restore the shards, or rewrite the index (deepmim data index)"
        )
    decoder = Decoder(cfg.image_key, cfg.label_key, cfg.strict, labels)
    stream = WdsStream(
        shards, augment, decoder, seed, rank, world_size, cfg.num_workers, batch_size, cfg.shuffle_buffer
    )
    return WdsLoader(stream, collate, cfg.num_workers, shards.classes)
