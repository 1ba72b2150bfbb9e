"""Images/s per core of the ImageFolder JPEG pre-training pipeline: decode, RandomResizedCrop, flip, mask.

Generates photograph-like 500x375 JPEGs (ImageNet's most common size, ~100 KB at quality 90) in a
temporary ImageFolder and times, in one process on one thread (one core, i.e. one DataLoader worker),
interleaved round by round so that load from other processes hits all alike:

- plain:  torchvision's ImageFolder loader (PIL open + convert RGB) + transforms.RandomResizedCrop
          (PIL, bicubic) + RandomHorizontalFlip + ToTensor + Normalize: the MAE authors' pipeline;
- tensor: deepmim's ImageFolder (full decode to a uint8 tensor, channels-last) + PretrainTransform (the
          path the embedded / IDX datasets take);
- deepmim: what `deepmim pretrain` runs on an ImageFolder (SeededAugmentation -> from_file: header parsed
          and crop drawn before decoding, libjpeg-turbo (simplejpeg) decoding at 1/2-1/8 scale when the crop
          allows it, into a channels-last tensor for torch's vectorised uint8 resize; no full-size copy).

- decode only: deepmim's libjpeg-turbo full decode (`decode_colour_jpeg`), nothing else: the floor of any
          path that decodes the whole file (printed for reference, not a pipeline).

Each pipeline includes the per-sample mask noise (a seeded generator per sample, as the loader's collate).
Images/s per core are images per second of this process's CPU time (`time.process_time`, one thread):
on a shared machine that is what one core delivers, where wall time would also count the other
processes' turns; wall-clock rates are reported beside them.

    python benchmarks/data_throughput.py --img-size 224 --json OUTDIR/cpu_data.json
    python benchmarks/data_throughput.py --img-size 112 --img-size 224 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_stamp  # benchmarks/machine.py
from PIL import Image

from deepmim.config.schema import IMAGENET_MEAN, IMAGENET_STD
from deepmim.data import ImageFolder, SeededAugmentation, build_pretrain_transform
from deepmim.models.masking import noise_from_seeds


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, action="append", help="output size (repeatable); default 224")
    p.add_argument("--images", type=int, default=64, help="distinct JPEG files generated")
    p.add_argument("--rounds", type=int, default=5, help="timed passes over the files per pipeline")
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--patch-size", type=int, default=16, help="for the mask noise: (img_size / patch)^2 values")
    p.add_argument("--json", metavar="PATH")
    return p.parse_args()


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """Gradients, edges and sensor-like noise: entropy-codes like a photograph (~100 KB at 500x375, q90)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    f = rng.uniform(8, 40, size=(3, 2))
    img = np.stack([128 + 80 * np.sin(x / f[c, 0] + c) * np.cos(y / f[c, 1] - c) for c in range(3)], -1)
    img += 40 * ((x + 2 * y) // rng.integers(30, 90) % 2)[..., None]  # edges
    img += rng.normal(0, 14, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_folder(root: Path, n: int, h: int, w: int, quality: int) -> float:
    """n JPEGs in two class folders; returns the mean file size in KB."""
    sizes = []
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(photo(h, w, i)).save(path, quality=quality)
        sizes.append(path.stat().st_size)
    return statistics.mean(sizes) / 1024


def plain_pipeline(root: Path, img_size: int, num_patches: int):
    """The authors' pipeline (MAE main_pretrain.py): torchvision ImageFolder + PIL transforms."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(
                img_size, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)

    def item(i: int):
        image, label = dataset[i]
        return image, label, noise_from_seeds(torch.tensor([i]), num_patches)

    return item, len(dataset)


def deepmim_pipeline(root: Path, img_size: int, num_patches: int, from_files: bool):
    transform = build_pretrain_transform(img_size, IMAGENET_MEAN, IMAGENET_STD, 0.2, True)
    dataset = SeededAugmentation(ImageFolder(str(root), split=None), transform, seed=0)
    dataset.from_files = from_files

    def item(i: int):
        image, label, seed, _replaced = dataset[i]
        return image, label, noise_from_seeds(torch.tensor([seed]), num_patches)

    return item, len(dataset)


def decode_only(root: Path):
    from deepmim.data.transforms import decode_colour_jpeg

    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    return (lambda i: decode_colour_jpeg(paths[i])), len(paths)


def time_pass(item, n: int) -> tuple:
    """(CPU seconds, wall seconds) of one pass over the n files."""
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        item(i)
    return time.process_time() - c0, time.perf_counter() - t0


def run_size(root: Path, img_size: int, args) -> dict:
    num_patches = (img_size // args.patch_size) ** 2
    pipelines = {
        "plain": plain_pipeline(root, img_size, num_patches),
        "tensor": deepmim_pipeline(root, img_size, num_patches, from_files=False),
        "deepmim": deepmim_pipeline(root, img_size, num_patches, from_files=True),
        "decode only": decode_only(root),
    }
    for item, n in pipelines.values():  # warm-up: file cache, allocator
        time_pass(item, n)
    times = {name: [] for name in pipelines}
    for r in range(args.rounds):
        for name in list(pipelines) if r % 2 == 0 else list(pipelines)[::-1]:
            item, n = pipelines[name]
            times[name].append(time_pass(item, n))
    n = pipelines["plain"][1]
    out = {
        name: {
            "img_per_s_per_core": n / statistics.median(c for c, _ in t),
            "img_per_s_wall": n / statistics.median(w for _, w in t),
            "pass_cpu_s": [c for c, _ in t],
            "pass_wall_s": [w for _, w in t],
        }
        for name, t in times.items()
    }
    for name in ("tensor", "deepmim", "decode only"):
        paired = statistics.median([p[0] / q[0] for p, q in zip(times["plain"], times[name])])
        out[name]["speedup_vs_plain"] = out[name]["img_per_s_per_core"] / out["plain"]["img_per_s_per_core"]
        out[name]["speedup_vs_plain_paired"] = paired
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # one core, as one DataLoader worker
    sizes = args.img_size or [224]
    report = {
        "images": args.images,
        "source": f"{args.width}x{args.height} JPEG q{args.quality}",
        "torch": torch.__version__,
        "pillow": Image.__version__,
        "load_average_start": os.getloadavg()[0],
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="deepmim-data-bench-") as tmp:
        kb = write_folder(Path(tmp), args.images, args.height, args.width, args.quality)
        report["mean_file_kb"] = kb
        print(
            f"{args.images} generated {args.width}x{args.height} JPEGs, q{args.quality}, {kb:.0f} KB on average; "
            f"1 thread; load average {os.getloadavg()[0]:.1f}"
        )
        for size in sizes:
            res = run_size(Path(tmp), size, args)
            report["results"][str(size)] = res
            line = ", ".join(
                f"{name} {r['img_per_s_per_core']:.0f} img/s (wall {r['img_per_s_wall']:.0f})"
                + (
                    f" ({r['speedup_vs_plain']:.2f}x, paired {r['speedup_vs_plain_paired']:.2f}x)"
                    if "speedup_vs_plain" in r
                    else ""
                )
                for name, r in res.items()
            )
            print(f"output {size}px, per core: {line}")
    report["load_average_end"] = os.getloadavg()[0]
    print(f"1-min load average at the end: {report['load_average_end']:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        report["machine"] = machine_stamp()
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
