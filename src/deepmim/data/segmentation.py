"""Segmentation data: ADE20K, any image/mask folder pair, and the embedded shapes with masks.

Every dataset yields (uint8 image (3, H, W), int64 label map (H, W), name) with labels in
[0, num_classes) or `ignore_index`. Augmentations draw from a numpy Generator seeded by the
sample's position in the training stream, so the same run resumed mid-way sees the very same
crops, flips and colours (see `IterationSampler`).
"""

from __future__ import annotations

import os
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Sampler

from deepmim.config.schema import SegDataConfig
from deepmim.data.embedded import CLASSES as SHAPE_CLASSES
from deepmim.data.embedded import EmbeddedShapes
from deepmim.data.errors import DataError
from deepmim.data.folder import load_rgb
from deepmim.data.loader import mix_seed

ADE20K_NUM_CLASSES = 150
# The 150 SceneParsing classes in label order (mask value k + 1 -> class k), for the per-class table.
ADE20K_CLASSES = [
    name.replace("_", " ")
    for name in """
wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door
table mountain plant curtain chair car water painting sofa shelf house sea mirror rug field
armchair seat fence desk rock wardrobe lamp bathtub railing cushion base box column signboard
chest_of_drawers counter sand sink skyscraper fireplace refrigerator grandstand path stairs runway
case pool_table pillow screen_door stairway river bridge bookcase blind coffee_table toilet flower
book hill bench countertop stove palm kitchen_island computer swivel_chair boat bar arcade_machine
hovel bus towel light truck tower chandelier awning streetlight booth television_receiver airplane
dirt_track apparel pole land bannister escalator ottoman bottle buffet poster stage van ship
fountain conveyer_belt canopy washer plaything swimming_pool stool barrel basket waterfall tent bag
minibike cradle oven ball food step tank trade_name microwave pot animal bicycle lake dishwasher
screen blanket sculpture hood sconce vase traffic_light tray ashcan fan pier crt_screen plate
monitor bulletin_board shower radiator glass clock flag
""".split()
]
ADE20K_SPLITS = {"train": "training", "val": "validation"}
SEG_DATASETS = ("embedded", "ade20k", "maskfolder")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class SegSample(NamedTuple):
    image: torch.Tensor  # uint8 (3, H, W)
    label: torch.Tensor  # int64 (H, W), classes in [0, num_classes) or ignore_index
    name: str


# ----------------------------------------------------------------------------- datasets


def map_labels(
    raw: np.ndarray, num_classes: int, reduce_zero_label: bool, ignore_index: int, path: str
) -> torch.Tensor:
    """Raw mask values -> training labels; refuses values that are no class, naming the file."""
    label = raw.astype(np.int64)
    if reduce_zero_label:  # ADE20K: 0 is 'other', classes 1..150 become 0..149
        label = np.where(label == 0, ignore_index, label - 1)
        label = np.where(label == ignore_index - 1, ignore_index, label)  # 255 stays ignored
    bad = np.unique(label[(label != ignore_index) & ((label < 0) | (label >= num_classes))])
    if bad.size:
        shown = ", ".join(str(int(v) + (1 if reduce_zero_label else 0)) for v in bad[:8])
        raise DataError(
            f"mask '{path}' has values {shown} outside the {num_classes} classes"
            f"{' (after reduce_zero_label)' if reduce_zero_label else ''}; check data.num_classes "
            f"and data.reduce_zero_label"
        )
    return torch.from_numpy(label)


class MaskFolder(Dataset):
    """`root/images/<split>/<stem>.<jpg|png...>` with `root/<mask_dir>/<split>/<stem>.png`.

    Pairs are checked when listing (a missing mask is an error naming it); masks are single
    channel (palette PNGs keep their indices) and must match their image's size."""

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int,
        mask_dir: str = "annotations",
        reduce_zero_label: bool = False,
        ignore_index: int = 255,
        classes: Optional[Sequence[str]] = None,
    ):
        image_dir = os.path.join(root, "images", split)
        label_dir = os.path.join(root, mask_dir, split)
        for folder in (image_dir, label_dir):
            if not os.path.isdir(folder):
                raise DataError(
                    f"missing folder '{folder}'; data.path must hold images/{split}/ and {mask_dir}/{split}/"
                )
        stems = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(IMAGE_SUFFIXES) and f[0] != ".")
        if not stems:
            raise DataError(f"no images in '{image_dir}'")
        self.pairs: List[Tuple[str, str]] = []
        for name in stems:
            mask = os.path.join(label_dir, os.path.splitext(name)[0] + ".png")
            if not os.path.isfile(mask):
                raise DataError(f"missing mask '{mask}' for image '{os.path.join(image_dir, name)}'")
            self.pairs.append((os.path.join(image_dir, name), mask))
        self.num_classes, self.reduce_zero_label, self.ignore_index = num_classes, reduce_zero_label, ignore_index
        self.classes = list(classes) if classes else [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> SegSample:
        image_path, mask_path = self.pairs[index]
        try:
            image = load_rgb(image_path)
            with Image.open(mask_path) as mask_file:
                raw = np.array(mask_file)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read '{image_path}' / '{mask_path}': {err}") from err
        if raw.ndim != 2:
            raise DataError(
                f"mask '{mask_path}' has {raw.shape[-1]} channels; a mask is one channel of class "
                f"indices (a grey or palette PNG)"
            )
        if raw.shape != tuple(image.shape[1:]):
            raise DataError(
                f"mask '{mask_path}' is {raw.shape[1]}x{raw.shape[0]} but image '{image_path}' is "
                f"{image.shape[2]}x{image.shape[1]}"
            )
        label = map_labels(raw, self.num_classes, self.reduce_zero_label, self.ignore_index, mask_path)
        return SegSample(image, label, os.path.splitext(os.path.basename(image_path))[0])


class EmbeddedSegmentation(Dataset):
    """The embedded shapes with their per-pixel masks: class 0 background, 1..10 the shapes."""

    classes = ["background"] + list(SHAPE_CLASSES)

    def __init__(self, num_samples: int, img_size: int, split: str):
        self.shapes = EmbeddedShapes(num_samples, img_size=img_size, split=split)
        self.split = split

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> SegSample:
        image, _, mask = self.shapes.get_with_mask(index)
        return SegSample(image, mask, f"{self.split}_{index:05d}")


def build_seg_dataset(cfg: SegDataConfig, split: str) -> Dataset:
    """The dataset of `cfg` for split name `split` (train/val, or a folder name)."""
    if cfg.name not in SEG_DATASETS:
        raise DataError(f"unknown data.name '{cfg.name}' for segmentation; choose one of {', '.join(SEG_DATASETS)}")
    if cfg.name == "embedded":
        n = cfg.num_samples if split == cfg.train_split else cfg.val_samples
        return EmbeddedSegmentation(n, cfg.img_size, split)
    if not cfg.path:
        raise DataError(
            f"data.path is required for data.name={cfg.name}: the folder holding images/ and "
            f"{cfg.mask_dir}/ (ADE20K: ADEChallengeData2016)"
        )
    root = os.path.expanduser(cfg.path)
    if cfg.name == "ade20k":
        return MaskFolder(
            root,
            ADE20K_SPLITS.get(split, split),
            ADE20K_NUM_CLASSES,
            "annotations",
            reduce_zero_label=True if cfg.reduce_zero_label is None else cfg.reduce_zero_label,
            ignore_index=cfg.ignore_index,
            classes=ADE20K_CLASSES,
        )
    if not cfg.num_classes:
        raise DataError("data.num_classes is required for data.name=maskfolder")
    return MaskFolder(root, split, cfg.num_classes, cfg.mask_dir, bool(cfg.reduce_zero_label), cfg.ignore_index)


# ----------------------------------------------------------------------------- paired transforms


def rescale_size(h: int, w: int, long_edge: float, short_edge: float) -> Tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= long_edge, short side <= short_edge."""
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_pair(image: torch.Tensor, label: Optional[torch.Tensor], size: Tuple[int, int]):
    """Bilinear for the image (float result), nearest for the label."""
    image = F.interpolate(image[None].float(), size, mode="bilinear", align_corners=False)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size, mode="nearest")[0, 0].long()
    return image, label


def random_crop_box(
    label: torch.Tensor, crop: int, rng: np.random.Generator, cat_max_ratio: float, ignore_index: int
) -> Tuple[int, int, int, int]:
    """(top, left, height, width): up to 10 draws until no class covers more than cat_max_ratio
    of the crop's labelled pixels (and at least two classes are present), else the last draw."""
    h, w = label.shape
    for _ in range(10):
        top, left = int(rng.integers(0, max(h - crop, 0) + 1)), int(rng.integers(0, max(w - crop, 0) + 1))
        box = (top, left, min(crop, h), min(crop, w))
        if cat_max_ratio >= 1.0:
            break
        patch = label[top : top + box[2], left : left + box[3]]
        counts = torch.bincount(patch[patch != ignore_index].flatten())
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
            break
    return box


def photometric_distortion(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on 0-255 floats, each step with probability 0.5: brightness
    +-32, contrast x0.5-1.5 (before or after the colour steps), saturation x0.5-1.5, hue +-18/180."""
    from torchvision.transforms.v2 import functional as TF

    p = rng.random(8)
    if p[0] < 0.5:
        image = image + (p[1] * 64 - 32)
    contrast_first = p[2] < 0.5
    contrast = 0.5 + p[4] if p[3] < 0.5 else None
    if contrast_first and contrast:
        image = image * contrast
    image = image.clamp(0, 255) / 255
    if p[5] < 0.5:
        image = TF.adjust_saturation(image, 0.5 + float(rng.random()))
    if p[6] < 0.5:
        image = TF.adjust_hue(image, (float(rng.random()) * 36 - 18) / 180)
    image = image * 255
    if not contrast_first and contrast:
        image = image * contrast
    return image.clamp(0, 255)


class SegTransform:
    """Training: random rescale of the base size, cat-max-ratio crop, flip, photometric
    distortion, normalise, pad to the crop (label pad = ignore). Evaluation: the base-size
    rescale and normalisation only (labels stay at their original size)."""

    def __init__(self, cfg: SegDataConfig, train: bool):
        self.cfg, self.train = cfg, train
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: Optional[np.random.Generator] = None):
        c = self.cfg
        h, w = image.shape[1:]
        if not self.train:
            image, _ = resize_pair(image, None, rescale_size(h, w, c.scale[0], c.scale[1]))
            return (image - self.mean) / self.std, label
        ratio = rng.uniform(c.ratio_range[0], c.ratio_range[1])
        image, label = resize_pair(image, label, rescale_size(h, w, c.scale[0] * ratio, c.scale[1] * ratio))
        top, left, ch, cw = random_crop_box(label, c.crop_size, rng, c.cat_max_ratio, c.ignore_index)
        image, label = image[:, top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]
        if c.hflip and rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        if c.photometric:
            image = photometric_distortion(image, rng)
        image = (image.round() - self.mean) / self.std
        pad_h, pad_w = c.crop_size - image.shape[1], c.crop_size - image.shape[2]
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=c.ignore_index)
        return image, label


# ----------------------------------------------------------------------------- iteration-based loading


class IterationSampler(Sampler[int]):
    """Positions in an endless stream of shuffled passes over the data, `batches_per_epoch`
    batches per Trainer "epoch" (= one evaluation interval).

    Rank r takes stream positions r, r + world, ...; the dataset turns a position into a
    sample index and an augmentation seed (`StreamDataset`), so resuming at (epoch, batch)
    replays exactly what an uninterrupted run would have drawn."""

    def __init__(self, batches_per_epoch: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.batches_per_epoch, self.batch_size = batches_per_epoch, batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = int(epoch), 0

    def set_start(self, batch_index: int, batch_size: int) -> None:
        self.start = int(batch_index) * int(batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size - self.start

    def __iter__(self) -> Iterator[int]:
        per_rank = self.batches_per_epoch * self.batch_size
        first = self.epoch * per_rank
        for j in range(first + self.start, first + per_rank):
            yield j * self.world_size + self.rank


class StreamDataset(Dataset):
    """Stream position -> (augmented image, label): pass p = position // N is a permutation
    seeded by (seed, p); the augmentation is seeded by (seed, position)."""

    def __init__(self, dataset: Dataset, transform: SegTransform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)
        self._pass, self._order = -1, None

    def __len__(self) -> int:
        return len(self.dataset)

    def index_at(self, position: int) -> int:
        n = len(self.dataset)
        pass_index = position // n
        if pass_index != self._pass:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, pass_index))
            self._order, self._pass = torch.randperm(n, generator=generator), pass_index
        return int(self._order[position % n])

    def __getitem__(self, position: int):
        sample = self.dataset[self.index_at(position)]
        rng = np.random.default_rng(mix_seed(self.seed, 0x5E6, position))
        return self.transform(sample.image, sample.label, rng)


class SegBatch(NamedTuple):
    images: torch.Tensor  # float (N, 3, crop, crop)
    labels: torch.Tensor  # int64 (N, crop, crop)


def collate_seg(items) -> SegBatch:
    return SegBatch(torch.stack([i for i, _ in items]), torch.stack([lab for _, lab in items]))


class IterationLoader(torch.utils.data.DataLoader):
    """The Trainer's EpochLoader over an IterationSampler."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        if start_batch:
            self.sampler.set_start(start_batch, self.batch_size)


def build_iteration_loader(
    cfg: SegDataConfig, batch_size: int, batches_per_epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> IterationLoader:
    dataset = StreamDataset(build_seg_dataset(cfg, cfg.train_split), SegTransform(cfg, train=True), seed)
    sampler = IterationSampler(batches_per_epoch, batch_size, rank, world_size)
    return IterationLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_seg,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,
    )


# ----------------------------------------------------------------------------- colours


def palette(num_colours: int = 256) -> np.ndarray:
    """PASCAL VOC's bit-interleaved palette (uint8 (num_colours, 3)): distinct, deterministic,
    class 0 black; the ignore index 255 is drawn white."""
    colours = np.zeros((num_colours, 3), dtype=np.uint8)
    for i in range(num_colours):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours[i] = (r, g, b)
    if num_colours > 255:
        colours[255] = (255, 255, 255)
    return colours


def colourise(label: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours."""
    return palette()[np.clip(label, 0, 255).astype(np.int64)]
