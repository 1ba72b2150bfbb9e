"""`deepmim pretrain --config demo` end to end through the trainer (data loading, masks, logging,
checkpoints), as % of the matmul peak measured in the same process just before and just after.

    python benchmarks/demo_throughput.py                         # the demo recipe, 3 epochs
    python benchmarks/demo_throughput.py train.batch_size=256    # any override of the recipe

img/s is read from the run's metrics.jsonl (the trainer's own `img_per_s`, every window but the first,
which holds start-up); GFLOP/image is counted once with FlopCounterMode on the recipe's model.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine_stamp  # noqa: E402  benchmarks/machine.py
from pretrain_throughput import DTYPES, matmul_peak  # noqa: E402

from deepmim.models.deepmim import DeepMIM  # noqa: E402
from deepmim.tasks.pretrain import load_pretrain_config, run_pretrain  # noqa: E402
from deepmim.training.distributed import resolve_device  # noqa: E402
from deepmim.training.precision import resolve_precision  # noqa: E402


def flops_per_image(cfg) -> float:
    model = DeepMIM(cfg.model)
    model.set_fused_attn(False)  # the counter has no formula for CPU flash attention
    enc = cfg.model.encoder
    images = torch.randn(8, enc.in_chans, enc.img_size, enc.img_size)
    with FlopCounterMode(display=False) as counter:
        model(images).loss.backward()
    return counter.get_total_flops() / 8


def main(overrides) -> None:
    out = tempfile.mkdtemp(prefix="deepmim-demo-bench-")
    overrides = [
        "train.epochs=3",
        "train.progress=false",
        "train.plots=false",
        "train.tensorboard=false",
        "train.log_every_steps=4",
        f"train.output_dir={out}",
        *overrides,
    ]
    cfg = load_pretrain_config("demo", overrides)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    gflop = flops_per_image(cfg) / 1e9
    before = {p: matmul_peak(device, DTYPES[p])["gflop_per_s"] for p in dict.fromkeys(("fp32", "bf16", precision))}
    load_start = os.getloadavg()[0]
    run_pretrain(cfg)
    after = {p: matmul_peak(device, DTYPES[p])["gflop_per_s"] for p in before}
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in rows if r["type"] == "train"][1:]
    img_s = statistics.median(rates)
    peak = statistics.mean([before[precision], after[precision]])
    report = {
        "overrides": overrides,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "gflop_per_image": gflop,
        "img_per_s": img_s,
        "img_per_s_windows": rates,
        "gflop_per_s": img_s * gflop,
        "matmul_peak_before": before,
        "matmul_peak_after": after,
        "fraction_of_peak": img_s * gflop / peak,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
    }
    print(
        f"demo through the trainer: {img_s:.0f} img/s (median of {len(rates)} windows) x {gflop:.3f} GFLOP/image = "
        f"{img_s * gflop:.0f} GFLOP/s = {100 * report['fraction_of_peak']:.1f}% of the {precision} matmul peak "
        f"({before[precision]:.0f} before, {after[precision]:.0f} after the run); load average "
        f"{load_start:.1f} -> {report['load_average_end']:.1f}"
    )
    json_path = os.environ.get("DEMO_JSON")
    if json_path:
        report["machine"] = machine_stamp(device)
        Path(json_path).write_text(json.dumps(report, indent=2))
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main(sys.argv[1:])
