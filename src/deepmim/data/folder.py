"""ImageFolder for the ImageNet layout that survives real-world folders.

Large scraped folders always contain a few grayscale, palette, CMYK, transparent,
truncated or plain corrupt files. Listing never opens a file (fast on millions of
images); loading converts every mode to RGB, and an unreadable file yields `None`
(replaced by another sample in training batches, left out of evaluation) instead of
killing a multi-day run, unless `strict=True`.

Transparency is composited on white rather than dropped: the colour under a fully
transparent pixel is arbitrary (often black or leftover junk), white is what a viewer shows.
Truncated files are detected because PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` stays False;
code elsewhere in the process must not set it.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from deepmim.data.errors import DataError

logger = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
_LAYOUT_HINT = "an ImageNet-style folder (root/train/<class>/*.jpg or root/<class>/*.jpg)"


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def resolve_split_dir(root: str, split: Optional[str]) -> str:
    """`root/<split>` when that folder exists, else `root` itself."""
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise DataError(f"data.path '{root}' {what}; set data.path to {_LAYOUT_HINT}")
    if split:
        candidate = os.path.join(root, split)
        if os.path.isdir(candidate):
            return candidate
        if split != "train":
            logger.warning(
                "no '%s' folder in data.path '%s'; using its class folders for split '%s'", split, root, split
            )
    return root


def walk_once(top: str, seen: Dict[Tuple[int, int], str]) -> Iterator[Tuple[str, List[str]]]:
    """(folder, sorted file names) of every folder under `top`, hidden ones left out, symbolic links
    followed, but every real folder once: one already listed (`seen`: (device, inode) -> the path it was
    listed under) is skipped with a warning, so a link to a parent folder neither lists its images again
    nor walks forever."""
    for folder, subfolders, files in os.walk(top, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:
            subfolders[:] = []
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            logger.warning(
                "'%s' is the folder '%s' again (a symbolic link): its images are listed once", folder, seen[key]
            )
            subfolders[:] = []
            continue
        seen[key] = folder
        subfolders.sort()  # os.walk order is filesystem order; make it deterministic
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        yield folder, sorted(files)


def list_samples(directory: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Sorted class names (sub-folders) and (path, class_index) pairs, without opening any file."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    samples: List[Tuple[str, int]] = []
    seen: Dict[Tuple[int, int], str] = {}
    for class_index, name in enumerate(classes):
        for folder, files in walk_once(os.path.join(directory, name), seen):
            samples.extend((os.path.join(folder, f), class_index) for f in files if _is_image_file(f))
    return classes, samples


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; alpha (also palette transparency) is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of PIL's clipping at 255.
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
        image = Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str) -> torch.Tensor:
    """Decode a file fully (so truncation is detected) into a uint8 tensor (3, H, W), channels-last in memory
    (the layout torch's vectorised uint8 resize kernels take)."""
    with Image.open(path) as image:
        image.load()
        rgb = _to_rgb(image)
        array = np.array(rgb, dtype=np.uint8)  # a copy: writable, detached from the file
    return torch.from_numpy(array).permute(2, 0, 1)


class ImageFolder(Dataset):
    """`root/<class>/<image>` (or `root/<split>/<class>/<image>` when that exists).

    `dataset[i]` -> (uint8 image (3, H, W), class_index), or `None` for an unreadable
    file (a warning names it once per process) unless `strict=True`, which raises DataError.
    """

    def __init__(self, root: str, split: Optional[str] = "train", strict: bool = False):
        self.root = os.fspath(root)
        self.directory = resolve_split_dir(self.root, split)
        self.strict = strict
        self.classes, self.samples = list_samples(self.directory)
        if not self.classes:
            raise DataError(
                f"data.path '{self.directory}' has no class sub-folders; set data.path to {_LAYOUT_HINT}, or, to "
                f"pre-train on a folder of unlabelled images, set data.name=images"
            )
        if not self.samples:
            raise DataError(
                f"data.path '{self.directory}' has {len(self.classes)} class folders but no images "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)}); set data.path to {_LAYOUT_HINT}"
            )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]
        self._warned: Set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Optional[Tuple[torch.Tensor, int]]:
        return self.load_with(index, load_rgb)

    def load_with(self, index: int, decode: Callable[[str], T]) -> Optional[Tuple[T, int]]:
        """(decode(path), label), with this folder's handling of unreadable files (None or DataError).
        `decode` may do more than decode, e.g. `PretrainTransform.from_file` decodes straight into the crop."""
        path, label = self.samples[index]
        try:
            return decode(path), label
        except Exception as exc:  # any decoder failure: corrupt, truncated, unsupported, too large
            if self.strict:
                raise DataError(
                    f"cannot read image '{path}' ({type(exc).__name__}: {exc}); "
                    "fix or remove the file, or set data.strict=false to skip unreadable images"
                ) from exc
            if path not in self._warned:
                self._warned.add(path)
                logger.warning(
                    "unreadable image '%s' (%s: %s): training takes another image in its place, "
                    "evaluation leaves it out (data.strict=true stops instead)",
                    path,
                    type(exc).__name__,
                    exc,
                )
            return None


class FlatImageFolder(ImageFolder):
    """`data.name=images`: every image file under `root` (or `root/<split>` when that exists), at any depth,
    in sorted path order, without labels: items are (uint8 image, UNLABELLED). For pre-training on
    unlabelled collections; a command that needs labels stops with `labels`, the reason."""

    def __init__(self, root: str, split: Optional[str] = "train", strict: bool = False, labels: Optional[str] = None):
        from deepmim.data.labels import UNLABELLED, missing_labels

        self.root = os.fspath(root)
        if labels is not None:
            raise missing_labels(f"data.name=images reads '{self.root}' without labels", labels)
        self.directory = resolve_split_dir(self.root, split)
        self.strict = strict
        self.classes: List[str] = []
        self.samples = [(path, UNLABELLED) for path in list_images(self.directory)]
        if not self.samples:
            raise DataError(
                f"data.path '{self.directory}' holds no images (extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}, searched in every sub-folder); set data.path to a folder "
                f"of images"
            )
        self.class_to_idx = {}
        self.targets = [label for _, label in self.samples]
        self._warned: Set[str] = set()


def list_images(directory: str) -> List[str]:
    """Every image file under `directory`, recursively (hidden files and folders left out), sorted."""
    found: List[str] = []
    for folder, files in walk_once(directory, {}):
        found.extend(os.path.join(folder, f) for f in files if _is_image_file(f))
    return found
