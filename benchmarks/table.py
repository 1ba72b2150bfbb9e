"""Markdown tables of the benchmarks' JSON files: pretrain_throughput.py (one row per mode, speed-ups
against the baseline of the same run: same process, interleaved steps), and after it those of
demo_throughput.py, downstream_throughput.py and data_throughput.py.

    python benchmarks/table.py benchmarks/results/<date>_<machine>_<commit>/cpu_*.json   # one run's folder
"""

from __future__ import annotations

import json
import sys


def mode_label(r: dict, fsdp: bool = False) -> str:
    return (
        f"{r['precision']} + {r['attn']}"
        + (" + compile" if r.get("compile") else "")
        + (" + regional compile" if r.get("regional_compile") else "")
        + (" + teacher in " + r["precision"] if r.get("frozen_targets_in_precision") else "")
        + (" + FSDP" if fsdp else "")
    )


def speedup_of(report: dict, name: str):
    compare = report.get("compare") or {}
    entry = compare.get(name) if name in compare else (compare if "speedup" in compare and name == "chosen" else None)
    return entry


def bf16_share(r: dict, peaks: dict) -> str:
    """Against the bf16 peak only where bf16 is real: a CPU that emulates bf16 has a 'peak' far below
    its fp32 one, and a share of it says nothing."""
    if peaks["bf16"] < peaks["fp32"]:
        return f"n/a (bf16 emulated, {peaks['bf16']:.1f} GFLOP/s)"
    return f"{100 * r['gflop_per_s'] / peaks['bf16']:.0f}%"


def precision_share(r: dict, peaks: dict) -> str:
    """Against the peak of the precision the mode computes in (fp16 included)."""
    if r["precision"] == "fp32":
        return f"{100 * r['gflop_per_s'] / peaks['fp32']:.0f}%"
    if r["precision"] == "bf16":
        return bf16_share(r, peaks)
    return f"{100 * r['gflop_per_s'] / peaks[r['precision']]:.0f}% of {r['precision']}"


def rows(report: dict):
    peaks = {k: v["gflop_per_s"] for k, v in report["matmul_peak"].items()}
    for name, r in report["modes"].items():
        entry = speedup_of(report, name)
        speed = (
            "1 (baseline)"
            if name == "baseline"
            else (
                f"**{entry['speedup']:.2f}x** ({entry['speedup_paired']:.2f}x"
                + (f"; CPU time {entry['speedup_cpu_time']:.2f}x" if "speedup_cpu_time" in entry else "")
                + ")"
                if entry
                else "-"
            )
        )
        diff = "-" if not entry else f"{entry['rel_loss_diff']['total']:.1e}"
        compile_s = f"{r['compile_s']:.0f} s" if r.get("compile_s") else "-"
        fsdp = bool(report.get("fsdp")) and name != "baseline"
        yield (
            f"| {report['preset']}, bs {report['batch_size']} | {mode_label(r, fsdp)} | {r['img_per_s']:.2f} "
            f"({r['img_per_s_min']:.2f}-{r['img_per_s_max']:.2f}) | {r['gflop_per_s']:.0f} | "
            f"**{precision_share(r, peaks)}** ({100 * r['gflop_per_s'] / peaks['fp32']:.0f}% / {bf16_share(r, peaks)}) | "
            f"{r['peak_mem_gib']:.2f} | {speed} | {diff} | {compile_s} |"
        )


def other_tables(reports) -> None:
    """The demo, downstream and data JSON files, one small table each kind."""
    demos = [(p, r) for p, r in reports if "fraction_of_peak" in r]
    if demos:
        print(
            "\n| demo through the trainer | img/s | GFLOP/s | % of the matmul peak | load average |\n|---|---|---|---|---|"
        )
        for p, r in demos:
            extra = " ".join(
                o for o in r["overrides"] if o.startswith(("train.batch_size", "train.compile", "data.num_workers"))
            )
            print(
                f"| `{p}` {extra} ({r['precision']}, {r['threads']} threads) | {r['img_per_s']:.0f} | "
                f"{r['gflop_per_s']:.0f} | **{100 * r['fraction_of_peak']:.1f}%** | "
                f"{r['load_average_start']:.1f} -> {r['load_average_end']:.1f} |"
            )
    for p, r in reports:
        results = r.get("results") or {}
        first = next(iter(results.values()), {})
        if "vs_pretrain" in first:
            print(
                f"\n`{p}` ({r['preset']}, batch {r['batch_size']}, {r['precision']}, {r['threads']} threads, "
                f"load {r['load_average']:.1f})\n\n| step | img/s | vs pre-training (paired) | GFLOP/image | GFLOP/s | "
                f"time in matmuls | img/s if only matmuls took time |\n|---|---|---|---|---|---|---|"
            )
            for name, v in results.items():
                print(
                    f"| {name} | {v['img_per_s']:.1f} | {v['vs_pretrain']:.2f}x ({v['vs_pretrain_paired']:.2f}x) | "
                    f"{v.get('gflop_per_image', float('nan')):.3f} | {v.get('gflop_per_s', float('nan')):.0f} | "
                    f"{100 * v.get('matmul_time_share', float('nan')):.0f}% | "
                    f"{v.get('img_per_s_if_only_matmuls', float('nan')):.0f} |"
                )
        elif "plain" in first:
            print(
                f"\n`{p}` ({r['source']}, {r['images']} files, load {r['load_average_start']:.1f} -> "
                f"{r['load_average_end']:.1f})\n\n| output | pipeline | img/s per core (CPU time) | wall img/s | "
                f"vs plain PIL + torchvision (paired) |\n|---|---|---|---|---|"
            )
            for size, res in results.items():
                for name, v in res.items():
                    vs = (
                        f"{v['speedup_vs_plain']:.2f}x ({v['speedup_vs_plain_paired']:.2f}x)"
                        if "speedup_vs_plain" in v
                        else "1"
                    )
                    print(f"| {size} px | {name} | {v['img_per_s_per_core']:.0f} | {v['img_per_s_wall']:.0f} | {vs} |")


def main(paths) -> None:
    reports = []
    for path in paths:
        with open(path) as f:
            reports.append((path, json.load(f)))
    paths = [p for p, r in reports if "modes" in r]
    print(
        "| model, batch | mode | img/s median (min-max) | GFLOP/s | % of its precision's matmul peak (of fp32 / bf16) "
        "| peak memory GiB | speed-up vs the baseline row (paired) | rel. loss diff | compile time |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        for row in rows(report):
            print(row)
    print()
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        peaks = ", ".join(f"{k} {v['gflop_per_s']:.1f}" for k, v in r["matmul_peak"].items())
        print(
            f"- `{path}`: {r['gflop_per_image']:.2f} GFLOP/image; matmul peaks (GFLOP/s) {peaks}; "
            f"load average {r['load_average_start']:.1f} -> {r['load_average_end']:.1f}; torch {r['torch']}, "
            f"{r['threads']} threads"
        )
        ceilings = [
            f"{mode_label(m)} {100 * m['matmul_time_share']:.0f}% -> {m['img_per_s_if_only_matmuls']:.2f} img/s"
            + (
                f" ({speedup_of(r, name)['speedup_if_only_matmuls']:.2f}x the baseline)"
                if "speedup_if_only_matmuls" in (speedup_of(r, name) or {})
                else ""
            )
            for name, m in r["modes"].items()
            if "matmul_time_share" in m
        ]
        if ceilings:
            print(f"  - time in matmuls and the img/s if nothing else took time: {'; '.join(ceilings)}")
    other_tables(reports)


if __name__ == "__main__":
    main(sys.argv[1:])
