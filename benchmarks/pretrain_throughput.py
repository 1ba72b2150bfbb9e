"""Throughput of full DeepMIM pre-training steps (forward + backward + AdamW) on random input.

Reports images/s, ms/step, GFLOP/s against the matmul peak measured in the same process, and
peak memory. `--compare` also runs the authors' CPU behaviour (fp32, unfused attention) in the
same process, interleaved step by step with the chosen mode, and prints the speed-up and the loss
difference on the same batch and mask: the shared CPU machines' speed drifts 15-25% between
processes, so only same-process ratios are meaningful.

    python benchmarks/pretrain_throughput.py --preset deepmim_pixel_vit_micro_p4_32 --batch-size 128
    python benchmarks/pretrain_throughput.py --preset deepmim_pixel_vit_base --batch-size 8 \\
        --steps 3 --warmup 1 --compare --json vitb.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import time
from functools import partial
from typing import Dict

import torch
from machine import machine_stamp  # benchmarks/machine.py
from matmul_time import matmul_seconds  # benchmarks/matmul_time.py
from torch.utils.flop_counter import FlopCounterMode

from deepmim import create_model
from deepmim.config.schema import OptimConfig
from deepmim.training.compile import should_compile
from deepmim.training.distributed import resolve_device
from deepmim.training.host_memory import reuse_freed_host_memory
from deepmim.training.optim import build_adamw, scaled_lr
from deepmim.training.precision import autocast, resolve_precision, use_fused_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="deepmim_pixel_vit_micro_p4_32", help="model preset (`deepmim presets`)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 where the hardware has it (as training does)",
    )
    p.add_argument(
        "--attn",
        default="auto",
        choices=["auto", "fused", "math"],
        help="fused: SDPA; math: plain matmul attention; auto: math for bf16 on CPU, else fused",
    )
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernel selection)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also time fp32 + math attention (the authors' CPU behaviour), interleaved with the "
        "chosen mode in this process, and report the speed-up and relative loss difference",
    )
    p.add_argument(
        "--modes",
        default=None,
        help="comma-separated modes to time side by side instead of the chosen one, each "
        "PRECISION+ATTN[+compile], e.g. fp32+fused,fp32+fused+compile,bf16+math",
    )
    p.add_argument(
        "--baseline",
        default="fp32+math",
        help="the mode --compare times against: fp32+math is the authors' code on a CPU, fp16+math "
        "their GPU recipe (fp16 autocast + loss scaling, unfused attention)",
    )
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="shard every mode but the baseline with FSDP2 (fully_shard per block, as train.strategy="
        "fsdp), in a process group of its own (1 process) unless run under torchrun",
    )
    p.add_argument(
        "--random-clip-teacher",
        action="store_true",
        help="for teacher presets (deepmim_clip_*): write a random-weight OpenAI-layout CLIP "
        "ViT-B/16 (open_clip) to a temp file and use it as the teacher, so the teacher's "
        "forward is timed as in real training",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--host-malloc",
        default="reuse",
        choices=["reuse", "default"],
        help="reuse: keep freed host memory as the trainer does (train.reuse_host_memory, one setting "
        "for the whole process, baseline included); default: glibc's own behaviour",
    )
    p.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("need --steps >= 1, --warmup >= 0 and --batch-size >= 1")
    return args


def sync(device: torch.device) -> None:
    """CUDA kernels run asynchronously: without this we would time the launches, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_matmul(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    a @ b
    sync(device)
    return time.perf_counter() - t0


def matmul_peak(device: torch.device, dtype: torch.dtype, reps: int = 5, max_product_s: float = 1.5) -> Dict:
    """Best-of-`reps` GFLOP/s of a square matmul: the ceiling the model's matmuls can reach here.

    Aims at 2048^3 (8192^3 on CUDA), growing n from 256, but stops early when one product of the next
    size would take over `max_product_s`: a CPU without bf16 hardware runs bf16 at ~1 GFLOP/s, where one
    2048^3 product takes a quarter of a minute.
    """
    target = 8192 if device.type == "cuda" else 2048
    n = 256
    while True:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        a @ b  # warm-up: kernel choice, page faults
        t = _time_matmul(a, b, device)
        if n >= target or 8 * t > max_product_s:
            break
        n *= 2
    best = min([t] + [_time_matmul(a, b, device) for _ in range(reps - 1)])
    return {"gflop_per_s": 2 * n**3 / best / 1e9, "n": n}


def reset_peak_memory(device: torch.device) -> None:
    """Per-step peaks, so that each mode gets its own: on Linux, writing 5 to clear_refs resets the
    RSS high-water that getrusage reports."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the CPU figure is the process high-water so far


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train_step(model, optimizer, scaler, images, noise, device, precision, forward=None) -> Dict[int, float]:
    """One step exactly as the trainer does it; returns the per-head losses (a host sync).
    `forward`: what to call instead of the model (its torch.compile'd form)."""
    with autocast(device, precision):
        out = (forward if forward is not None else model)(images, noise=noise)
    scaler.scale(out.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return {"total": out.loss.item(), **{b: v.item() for b, v in out.losses.items()}}


def count_step_flops(model, images, noise, device, precision) -> int:
    """FLOPs of forward + backward of one step, counted once (the AdamW update is not matmul work).

    Counted with math attention: FlopCounterMode has no formula for CPU flash SDPA and would skip it.
    """
    model.set_fused_attn(False)
    with FlopCounterMode(display=False) as counter:
        with autocast(device, precision):
            loss = model(images, noise=noise).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def apply_mode(model, mode: dict) -> None:
    """The attention kernel of `mode`, and for the authors' baseline MAE's patch embedding (every patch
    projected, then the masked ones dropped) instead of projecting only the kept patches."""
    model.set_fused_attn(mode["fused"])
    model.encoder.embed_kept_only = not mode.get("authors", False)


def first_losses(model, images, noise, device, mode: dict) -> Dict:
    """Losses of one mode on the initial weights: every mode sees the same weights, batch and mask."""
    apply_mode(model, mode)
    with autocast(device, mode["precision"]):  # with grad: a regionally compiled model compiles its training graph
        out = model(images, noise=noise)
    return {"total": out.loss.item(), **{b: v.item() for b, v in out.losses.items()}}


def mode_model(model, mode: dict, fsdp: bool = False):
    """The model a mode trains: the shared one, or (for +frozen / +regional, which change the model in
    place, and under --fsdp) a copy with the same weights."""
    if not (mode.get("frozen") or mode.get("regional") or fsdp):
        return model
    copy_ = copy.deepcopy(model)
    if mode.get("frozen"):
        copy_.store_frozen_targets_in(mode["precision"])
    if mode.get("regional"):
        from deepmim.training.compile import compile_blocks
        from deepmim.training.parallel import transformer_blocks

        for module in [copy_, *copy_.targets.values()]:
            compile_blocks(transformer_blocks(module))
    if fsdp:
        from deepmim.training.parallel import shard_fsdp

        shard_fsdp(copy_)
    return copy_


def init_single_process_group(device: torch.device) -> None:
    """FSDP needs a process group: a 1-process one here unless torchrun made one."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def run_modes(model, images, noise, device, modes, args) -> Dict[str, dict]:
    """Time `args.steps` training steps of every mode, interleaved (A B, then B A, ...).

    Interleaving matters on a shared, noisy machine: a burst of load from another process then
    slows every mode alike instead of one of them, so their ratio stays meaningful. Modes share the
    model and optimizer unless they change the model (a step costs the same whatever the weights are).
    """
    models = {m["name"]: m["model"] for m in modes}
    optimizers, shared = {}, None
    for m in modes:
        if models[m["name"]] is model:
            shared = shared or build_adamw(model, OptimConfig(), scaled_lr(OptimConfig(), len(images)), device)
            optimizers[m["name"]] = shared
        else:
            optimizers[m["name"]] = build_adamw(models[m["name"]], OptimConfig(), 1e-4, device)
    scalers = {m["name"]: torch.amp.GradScaler(device.type, enabled=m["precision"] == "fp16") for m in modes}
    times = {m["name"]: [] for m in modes}
    cpu_times = {m["name"]: [] for m in modes}  # this process's CPU seconds: what other processes cannot take
    memory = {m["name"]: 0.0 for m in modes}
    compiled = {m["name"]: torch.compile(model) for m in modes if m.get("compile")}
    for mode in modes:  # compile time is paid once per run: reported, not timed per step
        if mode.get("compile") or mode.get("regional"):
            name = mode["name"]
            apply_mode(models[name], mode)
            t0 = time.perf_counter()
            train_step(
                models[name],
                optimizers[name],
                scalers[name],
                images,
                noise,
                device,
                mode["precision"],
                compiled.get(name),
            )
            mode["compile_s"] = (
                time.perf_counter() - t0 + (mode.get("first_forward_s", 0) if mode.get("regional") else 0)
            )
            print(f"[{name}] compiling took {mode['compile_s']:.1f} s (first forward + first step)", flush=True)
    for i in range(args.warmup + args.steps):
        for mode in modes if i % 2 == 0 else modes[::-1]:
            name = mode["name"]
            apply_mode(models[name], mode)
            reset_peak_memory(device)
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            train_step(
                models[name],
                optimizers[name],
                scalers[name],
                images,
                noise,
                device,
                mode["precision"],
                compiled.get(name),
            )
            sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
                cpu_times[name].append(time.process_time() - c0)
            memory[name] = max(memory[name], peak_memory_gib(device))
    return {
        m["name"]: {
            **summarize(times[m["name"]], len(images), m, memory[m["name"]]),
            "cpu_step_times_s": cpu_times[m["name"]],
        }
        for m in modes
    }


def add_matmul_ceilings(results: Dict[str, dict], modes, images, noise, device) -> None:
    """For eager modes on a CPU: the seconds one more step spends in matmul kernels, their share of the
    median step, and the images/s if nothing else took time (the ceiling the matmul kernels set)."""
    for mode in modes:
        if device.type != "cpu" or mode.get("compile") or mode.get("regional"):
            continue
        name, model = mode["name"], mode["model"]
        optimizer = build_adamw(model, OptimConfig(), 1e-4, device)
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        apply_mode(model, mode)
        seconds = matmul_seconds(
            partial(train_step, model, optimizer, scaler, images, noise, device, mode["precision"])
        )
        del optimizer
        model.zero_grad(set_to_none=True)
        r = results[name]
        r.update(
            matmul_s_per_step=seconds,
            matmul_time_share=seconds / r["median_s_per_step"],
            img_per_s_if_only_matmuls=len(images) / seconds,
        )


def summarize(times, batch: int, mode: dict, peak_mem_gib: float) -> dict:
    median = statistics.median(times)
    return {
        "precision": mode["precision"],
        "attn": "fused" if mode["fused"] else "math",
        "compile": bool(mode.get("compile")),
        "regional_compile": bool(mode.get("regional")),
        "frozen_targets_in_precision": bool(mode.get("frozen")),
        "compile_s": mode.get("compile_s"),
        "median_s_per_step": median,
        "ms_per_step": 1e3 * median,
        "img_per_s": batch / median,
        "img_per_s_min": batch / max(times),
        "img_per_s_max": batch / min(times),
        "step_times_s": times,
        "peak_mem_gib": peak_mem_gib,
    }


def add_flop_rates(result: dict, step_flops: int, peaks: Dict[str, float]) -> None:
    result["gflop_per_s"] = step_flops / result["median_s_per_step"] / 1e9
    result["peak_gflop_per_s"] = peaks[result["precision"]]
    result["fraction_of_peak"] = result["gflop_per_s"] / result["peak_gflop_per_s"]


def loss_difference(base: Dict, other: Dict) -> Dict[str, float]:
    """Relative difference of the total loss and the worst head, on identical weights/batch/mask."""
    rel = {k: abs(other[k] - base[k]) / max(abs(base[k]), 1e-12) for k in base}
    return {"total": rel["total"], "worst_head": max(v for k, v in rel.items() if k != "total")}


def print_mode(name: str, r: dict) -> None:
    compiled = (
        (" + torch.compile" if r.get("compile") else "")
        + (" + regional compile" if r.get("regional_compile") else "")
        + (" + frozen targets in " + r["precision"] if r.get("frozen_targets_in_precision") else "")
    )
    print(
        f"[{name}] {r['precision']} + {r['attn']} attention{compiled}: {r['img_per_s']:.2f} img/s median "
        f"(min {r['img_per_s_min']:.2f}, max {r['img_per_s_max']:.2f}), {r['ms_per_step']:.0f} ms/step, "
        f"{r['gflop_per_s']:.0f} GFLOP/s = {100 * r['fraction_of_peak']:.0f}% of the {r['precision']} "
        f"matmul peak ({r['peak_gflop_per_s']:.0f}), peak memory {r['peak_mem_gib']:.2f} GiB"
        + (
            f"; matmuls {100 * r['matmul_time_share']:.0f}% of the step (only matmuls: "
            f"{r['img_per_s_if_only_matmuls']:.2f} img/s)"
            if "matmul_time_share" in r
            else ""
        )
    )


FLAGS = ("compile", "regional", "frozen")


def parse_modes(text: str) -> list:
    """'fp32+fused,bf16+math+frozen+regional' -> mode dicts (name = the text of each). Flags: compile (the
    whole model, torch.compile), regional (each Transformer block compiled in place, as train.compile
    does), frozen (frozen targets such as a teacher stored in the mode's precision, as `deepmim pretrain`
    does); 'deepmim' = what `deepmim pretrain` runs by default on a long run here."""
    modes = []
    for item in text.split(","):
        item = item.strip()
        if item == "deepmim":
            modes.append({"name": item, "precision": "auto", "fused": None, "frozen": True, "regional": True})
            continue
        parts = item.split("+")
        flags = parts[2:]
        if (
            len(parts) < 2
            or parts[0] not in DTYPES
            or parts[1] not in ("fused", "math")
            or any(f not in FLAGS for f in flags)
            or len(set(flags)) != len(flags)
            or {"compile", "regional"} <= set(flags)
        ):
            raise SystemExit(
                f"--modes: cannot read {item!r}; write PRECISION+ATTN[+regional|+compile][+frozen], "
                f"e.g. bf16+math+frozen+regional, or deepmim"
            )
        modes.append(
            {"name": item, "precision": parts[0], "fused": parts[1] == "fused", **{f: f in flags for f in FLAGS}}
        )
    return modes


def model_spec(args):
    """The preset, with a random-weight CLIP teacher file for --random-clip-teacher: open_clip's ViT-B-16
    (the test extra installs open_clip), or where open_clip is missing timm's vit_base_patch16_clip_224
    (the same image tower, 768-d tokens without CLIP's 512-d projection)."""
    if not args.random_clip_teacher:
        return args.preset
    import tempfile

    from deepmim.models.presets import preset_config

    cfg = preset_config(args.preset)
    folder = tempfile.mkdtemp(prefix="deepmim-bench-")
    try:
        import open_clip
    except ImportError:
        import timm

        vit = timm.create_model("vit_base_patch16_clip_224", pretrained=False, num_classes=0)
        path = os.path.join(folder, "random_timm_clip_vit_b16.pt")
        torch.save(vit.state_dict(), path)
        cfg.target = {**cfg.target, "path": path, "kind": "timm", "model": "vit_base_patch16_clip_224", "dim": None}
        print(f"teacher: open_clip is not installed; random-weight timm vit_base_patch16_clip_224 at {path}")
        return cfg
    clip = open_clip.create_model("ViT-B-16", pretrained=None)
    path = os.path.join(folder, "random_clip_vit_b16.pt")
    torch.save(clip.state_dict(), path)
    cfg.target = {**cfg.target, "path": path, "kind": "open_clip", "model": "ViT-B-16"}
    print(f"teacher: random-weight open_clip ViT-B-16 written to {path}")
    return cfg


def main() -> None:
    args = parse_args()
    host_memory = reuse_freed_host_memory(args.host_malloc == "reuse")
    print(host_memory)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    fused = use_fused_attention(args.attn, device, precision)

    torch.manual_seed(args.seed)
    model = create_model(model_spec(args)).to(device)
    enc = model.cfg.encoder
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch_size, enc.in_chans, enc.img_size, enc.img_size, generator=gen).to(device)
    noise = torch.rand(args.batch_size, model.encoder.num_patches, generator=gen).to(device)

    modes = parse_modes(args.modes) if args.modes else [{"name": "chosen", "precision": precision, "fused": fused}]
    for m in modes:  # 'deepmim': the trainer's own choices on this machine
        if m["precision"] == "auto":
            m["precision"] = precision
            m["fused"] = use_fused_attention("auto", device, precision)
            m["regional"] = should_compile("auto", 10**9, device.type, precision)  # a long run's choice
    if args.compare:
        modes.insert(0, {**parse_modes(args.baseline)[0], "name": "baseline", "authors": True})

    step_flops = count_step_flops(model, images, noise, device, precision)
    used = ("fp32", "bf16", precision, *(m["precision"] for m in modes))
    measured = {p: matmul_peak(device, DTYPES[p]) for p in dict.fromkeys(used)}
    peaks = {p: m["gflop_per_s"] for p, m in measured.items()}
    print(
        f"{args.preset}, batch {args.batch_size}, {device} ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}; {args.warmup} warm-up + {args.steps} timed steps; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"FLOPs per step (fwd+bwd): {step_flops / 1e9:.1f} GFLOP = {step_flops / 1e9 / args.batch_size:.2f} "
        f"GFLOP/image; matmul peak: "
        + ", ".join(f"{k} {m['gflop_per_s']:.1f} GFLOP/s (n={m['n']})" for k, m in measured.items())
    )

    report = {
        "preset": args.preset,
        "batch_size": args.batch_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "warmup": args.warmup,
        "steps": args.steps,
        "gflop_per_step": step_flops / 1e9,
        "gflop_per_image": step_flops / 1e9 / args.batch_size,
        "matmul_peak": measured,
        "load_average_start": os.getloadavg()[0],
        "baseline": args.baseline if args.compare else None,
        "fsdp": args.fsdp,
        "host_malloc": host_memory,
    }
    if args.fsdp:
        init_single_process_group(device)
    model.train()
    for m in modes:
        m["model"] = mode_model(model, m, fsdp=args.fsdp and m["name"] != "baseline")
    losses = {}
    for m in modes:
        t0 = time.perf_counter()
        losses[m["name"]] = first_losses(m["model"], images, noise, device, m)
        m["first_forward_s"] = time.perf_counter() - t0  # includes compiling the forward for +regional
    report["modes"] = run_modes(model, images, noise, device, modes, args)
    add_matmul_ceilings(report["modes"], modes, images, noise, device)
    for name, result in report["modes"].items():
        add_flop_rates(result, step_flops, peaks)
        result["first_losses"] = losses[name]
        print_mode(name, result)
    if args.compare:
        base = report["modes"]["baseline"]
        report["compare"] = {}
        for name, other in report["modes"].items():
            if name == "baseline":
                continue
            speedup = base["median_s_per_step"] / other["median_s_per_step"]
            paired = statistics.median([b / c for b, c in zip(base["step_times_s"], other["step_times_s"])])
            diff = loss_difference(base["first_losses"], other["first_losses"])
            cpu = statistics.median(base["cpu_step_times_s"]) / statistics.median(other["cpu_step_times_s"])
            report["compare"][name] = {
                "speedup": speedup,
                "speedup_paired": paired,
                "speedup_cpu_time": cpu,
                "rel_loss_diff": diff,
            }
            if "img_per_s_if_only_matmuls" in other:
                ceiling = other["img_per_s_if_only_matmuls"] / base["img_per_s"]
                report["compare"][name]["speedup_if_only_matmuls"] = ceiling
                print(f"[{name}] if only its matmuls took time: {ceiling:.2f}x the baseline")
            print(
                f"[{name}] speed-up over the baseline ({args.baseline}): {speedup:.2f}x (ratio of medians; median of the "
                f"per-round ratios {paired:.2f}x; in this process's CPU time {cpu:.2f}x); relative loss difference "
                f"on the same batch and mask: {diff['total']:.1e} (worst head {diff['worst_head']:.1e})"
            )
    report["load_average_end"] = os.getloadavg()[0]
    busy = report["load_average_end"] > (os.cpu_count() or 1) + 0.5
    print(
        f"1-min load average at the end: {report['load_average_end']:.1f} on {os.cpu_count()} CPUs, this process "
        f"included" + ("; other processes competed for the CPUs, the timings suffer" if busy else "")
    )
    if args.json:
        report["machine"] = machine_stamp(device)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
