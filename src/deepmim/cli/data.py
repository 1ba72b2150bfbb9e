"""`deepmim data pack|index|bench`: streaming shards for many nodes (tasks/data.py)."""

from __future__ import annotations

import argparse

HELP = """\
WebDataset shards for streaming pre-training (data.name=wds; data.name=hf reads Hugging Face datasets):

  deepmim data pack /data/imagenet --out /data/imagenet-wds --shard-size 1000   # train/ and val/ -> tar shards
  deepmim pretrain --config deepmim_pixel_vit_base data.name=wds data.path=/data/imagenet-wds
  deepmim data index 'pipe:aws s3 cp s3://bucket/train-{000000..000999}.tar -' --out train.json
  deepmim data bench data.name=wds data.path=/data/imagenet-wds data.img_size=224 train.batch_size=128"""


# Its place and lines in the command list of `deepmim --help` (cli/main.py gathers them from every module)
ORDER = 40
SUMMARY = """\
  data       WebDataset shards: pack an ImageFolder, index shards anywhere, time the data pipeline
"""


def add_parser(subparsers) -> None:
    data = subparsers.add_parser(
        "data",
        help="write, index and time WebDataset shards",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data.set_defaults(handler=run)
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser("pack", help="an ImageFolder as tar shards + index")
    p.add_argument("imagefolder", help="root/<class>/*.jpg, or root/{train,val}/<class>/*.jpg")
    p.add_argument("--out", required=True, help="folder for <split>-NNNNNN.tar and <split>.json")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--split", action="append", default=None, help="pack only this split (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    i = sub.add_parser("index", help="count the samples of shards anywhere (local, pipe:) into an index")
    i.add_argument("pattern", help="shards, brace pattern, '::' joins several")
    i.add_argument("--out", required=True, help="index file (.json) to write; data.path takes it")
    b = sub.add_parser("bench", help="images/s of the training data pipeline for data.* overrides")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="data.* and train.batch_size overrides")
    b.add_argument("--batches", type=int, default=50, help="batches timed (after --warmup)")
    b.add_argument("--warmup", type=int, default=5, help="batches read before timing starts")


def run(args) -> int:
    from ..tasks.data import bench_loader, index_shards, pack_imagefolder

    if args.data_command == "pack":
        written = pack_imagefolder(args.imagefolder, args.out, args.shard_size, args.split, args.seed)
        for split, n in written.items():
            print(f"{split}: {n['samples']} images in {n['shards']} shard(s), index {args.out}/{split}.json")
        print(f"read them with: data.name=wds data.path={args.out}")
    elif args.data_command == "index":
        n = index_shards(args.pattern, args.out)
        print(
            f"{n['samples']} samples in {n['shards']} shard(s); wrote {args.out} (data.name=wds data.path={args.out})"
        )
    else:
        r = bench_loader(args.overrides, args.batches, args.warmup)
        print(
            f"{r['images']} images in {r['seconds']:.2f} s: {r['images_per_s']:.1f} images/s "
            f"({r['batches']} batches after {args.warmup} warm-up)"
        )
    return 0
