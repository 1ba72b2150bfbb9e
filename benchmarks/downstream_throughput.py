"""Images/s of fine-tuning and of feature extraction (probes) against pre-training, same encoder, same process.

Times, interleaved round by round on one random batch (no data loading):
- pretrain:   a DeepMIM pre-training step (forward + backward + AdamW) as `deepmim pretrain` runs it;
- finetune:   a fine-tuning step of timm's VisionTransformer built like `deepmim finetune` builds it
              (drop path 0.1, Mixup/CutMix, soft-target cross-entropy, AdamW), with the attention kernel
              and precision `deepmim finetune` chooses, and with SDPA under bf16 (slower on CPUs) for comparison;
- features:   the forward pass of feature extraction over every block (`deepmim knn/probe-layers/linprobe
              augment=false`) as it runs now (autocast, SDPA) and before (fp32).

For each step it also times the matrix multiplications (aten mm/addmm/bmm/baddbmm) of one more run and
reports their share of the step's median time and the images/s the step would reach if everything else
(casts, GELU, LayerNorm, softmax, optimizer) took no time: the ceiling the matmul kernels set. (Flash
SDPA is not a matmul here: the feature steps' attention counts as "everything else".)

    python benchmarks/downstream_throughput.py --preset deepmim_pixel_vit_micro_p4_32 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from machine import machine_stamp  # benchmarks/machine.py
from matmul_time import matmul_seconds  # benchmarks/matmul_time.py
from torch.utils.flop_counter import FlopCounterMode

from deepmim import create_model
from deepmim.config.schema import OptimConfig
from deepmim.training.distributed import resolve_device
from deepmim.training.host_memory import reuse_freed_host_memory
from deepmim.training.optim import build_adamw
from deepmim.training.parallel import set_fused_attention
from deepmim.training.precision import autocast, resolve_precision, use_fused_attention


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="deepmim_pixel_vit_micro_p4_32")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--host-malloc",
        default="reuse",
        choices=["reuse", "default"],
        help="reuse: keep freed host memory as the trainer does (train.reuse_host_memory, one setting "
        "for the whole process, baseline included); default: glibc's own behaviour",
    )
    p.add_argument("--json", metavar="PATH")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    host_memory = reuse_freed_host_memory(args.host_malloc == "reuse")
    print(host_memory)
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    from deepmim.models.classifier import vit_classifier

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    pre = create_model(args.preset).to(device)
    enc = pre.cfg.encoder
    n = args.batch_size
    images = torch.randn(n, enc.in_chans, enc.img_size, enc.img_size, device=device)
    noise = torch.rand(n, pre.encoder.num_patches, device=device)
    labels = torch.randint(0, 10, (n,), device=device)
    pre_opt = build_adamw(pre, OptimConfig(), 1e-4, device)
    clf = vit_classifier(enc, 10, enc.img_size, "avg", drop_path=0.1).to(device)
    clf_opt = build_adamw(clf, OptimConfig(), 1e-4, device)
    mixup, criterion = (
        Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10),
        SoftTargetCrossEntropy(),
    )
    encoder = pre.encoder
    blocks = list(range(1, encoder.depth + 1))

    pre_fused = use_fused_attention("auto", device, precision)

    def pretrain():
        pre.set_fused_attn(pre_fused)  # the features steps set the shared encoder's kernel: set it back
        with autocast(device, precision):
            loss = pre(images, noise=noise).loss
        loss.backward()
        pre_opt.step()
        pre_opt.zero_grad(set_to_none=True)

    def finetune(fused):
        def step():
            set_fused_attention(clf, fused)
            x, y = mixup(images, labels)
            with autocast(device, precision):
                loss = criterion(clf(x), y)
            loss.backward()
            clf_opt.step()
            clf_opt.zero_grad(set_to_none=True)

        return step

    def features(prec, fused):
        def step():
            encoder.set_fused_attn(fused)
            with torch.no_grad(), autocast(device, prec):
                taps, _ = encoder(images, taps=blocks)
                [encoder.norm(t)[:, 0].float() for t in taps.values()]

        return step

    now_fused = use_fused_attention("auto", device, precision)
    steps = {
        "pretrain": pretrain,
        f"finetune now ({precision}, {'SDPA' if now_fused else 'math'})": finetune(now_fused),
        f"finetune before ({precision}, SDPA)": finetune(True),
        f"features now ({precision}, SDPA)": features(precision, True),
        "features before (fp32)": features("fp32", True),
    }
    pre.train()
    clf.train()
    flops = {}  # GFLOP per image, counted with math attention (the counter has no CPU flash formula)
    counted = {"pretrain": pretrain, "finetune": finetune(False), "features": features("fp32", False)}
    pre.set_fused_attn(False)
    for kind, step in counted.items():
        with FlopCounterMode(display=False) as counter:
            step()
        flops[kind] = counter.get_total_flops() / n / 1e9
    flops = {k: flops[k.split()[0]] for k in steps}
    for f in steps.values():
        f()
    times = {k: [] for k in steps}
    for r in range(args.rounds):
        for k in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
    matmul_s = {k: matmul_seconds(f) for k, f in steps.items()}
    base = statistics.median(times["pretrain"])
    report = {
        "preset": args.preset,
        "batch_size": n,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "host_malloc": host_memory,
        "results": {},
    }
    print(
        f"{args.preset}, batch {n}, {device} ({torch.get_num_threads()} threads), precision {precision}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for k, t in times.items():
        med = statistics.median(t)
        paired = statistics.median([p / q for p, q in zip(times["pretrain"], t)])
        report["results"][k] = {
            "img_per_s": n / med,
            "vs_pretrain": base / med,
            "vs_pretrain_paired": paired,
            "gflop_per_image": flops[k],
            "gflop_per_s": flops[k] * n / med,
            "matmul_time_share": matmul_s[k] / med,
            "img_per_s_if_only_matmuls": n / matmul_s[k],
            "times_s": t,
        }
        print(
            f"{k}: {n / med:.1f} img/s = {base / med:.2f}x pre-training's (paired {paired:.2f}x); "
            f"{flops[k]:.3f} GFLOP/image, {flops[k] * n / med:.0f} GFLOP/s; matmuls {100 * matmul_s[k] / med:.0f}% "
            f"of the time (only matmuls: {n / matmul_s[k]:.0f} img/s)"
        )
    if args.json:
        report["machine"] = machine_stamp(device)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
