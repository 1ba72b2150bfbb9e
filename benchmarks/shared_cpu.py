"""`deepmim pretrain --config demo` on a CPU shared with other processes: images/s alone, beside one and two
single-threaded busy loops, and beside a second deepmim run, for each way of running the threads.

    python benchmarks/shared_cpu.py                        # every setting x every neighbourhood
    python benchmarks/shared_cpu.py --steps 20 --smoke     # a few steps: checks the script, measures nothing
    python benchmarks/shared_cpu.py data.num_samples=2048  # any override of the demo recipe

Settings (each a separate `deepmim pretrain` process, so OpenMP reads its environment at start):
  fixed       train.adapt_threads=false: the thread plan's count for the whole run, OpenMP's own waiting
  passive     fixed + OMP_WAIT_POLICY=PASSIVE: threads sleep at OpenMP barriers instead of spinning
  adapt       train.adapt_threads=true (the default): torch threads follow the cores the neighbours leave free
  adapt+passive  both

A run's images/s is the median of its logged windows after the first `--warmup` windows (start-up and the
first re-plan of adapt). Beside a second deepmim run both runs are timed and the report gives their sum
("together", as a share of the alone figure of the same setting and of `fixed`). The goals this is
measured against: beside one busy loop at least 50% of alone; two runs together at least 80% of one
run alone; alone no more than 5% slower than `fixed` alone. Timings are only meaningful on a machine
with nothing else running: the script records the load average before it starts and warns above 0.5.
Writes strict JSON (--out, default benchmarks/results/shared_cpu.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

SETTINGS = {
    "fixed": ({}, ["train.adapt_threads=false"]),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["train.adapt_threads=false"]),
    "adapt": ({}, ["train.adapt_threads=true"]),
    "adapt+passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["train.adapt_threads=true"]),
}
NEIGHBOURS = ("alone", "1 busy loop", "2 busy loops", "second deepmim run")
BUSY_LOOP = "while True: pass"


def pretrain_command(out: Path, steps: int, log_every: int, overrides: List[str]) -> List[str]:
    return [
        sys.executable,
        "-m",
        "deepmim",
        "pretrain",
        "--config",
        "demo",
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        f"train.log_every_steps={log_every}",
        "train.progress=false",
        "train.plots=false",
        "train.tensorboard=false",
        "train.loggers=[jsonl]",
        *overrides,
    ]


def images_per_second(out: Path, warmup: int) -> Optional[float]:
    """Median img/s of the run's logged windows after the first `warmup` ones (None: too few windows)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in rows if r["type"] == "train"][warmup:]
    return statistics.median(rates) if rates else None


def run_case(
    setting: str, neighbours: str, steps: int, log_every: int, warmup: int, root: Path, extra: List[str] = ()
) -> Dict:
    env_extra, overrides = SETTINGS[setting]
    overrides = [*extra, *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    loops = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        for _ in range({"1 busy loop": 1, "2 busy loops": 2}.get(neighbours, 0))
    ]
    outs = [
        root / f"{setting}-{neighbours.replace(' ', '-')}-{i}"
        for i in range(2 if neighbours == "second deepmim run" else 1)
    ]
    try:
        time.sleep(0.5 if loops else 0)  # the loops are running before the run starts
        runs = [
            subprocess.Popen(
                pretrain_command(out, steps, log_every, overrides),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for out in outs
        ]
        for run in runs:
            _, err = run.communicate()
            if run.returncode != 0:
                raise RuntimeError(f"{setting} / {neighbours}: deepmim exited {run.returncode}: {err[-2000:]}")
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    rates = [images_per_second(out, warmup) for out in outs]
    return {
        "setting": setting,
        "neighbours": neighbours,
        "img_per_s": rates,
        "total_img_per_s": sum(r for r in rates if r is not None) if all(r is not None for r in rates) else None,
    }


def summarise(results: List[Dict]) -> List[Dict]:
    """Each case as a share of its setting's alone figure and of fixed's alone figure."""
    alone = {r["setting"]: r["total_img_per_s"] for r in results if r["neighbours"] == "alone"}
    for r in results:
        own, base = alone.get(r["setting"]), alone.get("fixed")
        total = r["total_img_per_s"]
        r["share_of_alone"] = total / own if total is not None and own else None
        r["share_of_fixed_alone"] = total / base if total is not None and base else None
    return results


def table(results: List[Dict]) -> str:
    lines = [f"{'setting':<15} {'neighbours':<20} {'img/s':>14} {'of alone':>9} {'of fixed alone':>17}"]
    for r in results:
        rates = " + ".join(f"{x:.1f}" for x in r["img_per_s"] if x is not None) or "-"
        share = lambda v: f"{100 * v:.0f}%" if v is not None else "-"  # noqa: E731
        lines.append(
            f"{r['setting']:<15} {r['neighbours']:<20} {rates:>14} {share(r['share_of_alone']):>9} "
            f"{share(r['share_of_fixed_alone']):>17}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run (default 400)")
    parser.add_argument("--log-every", type=int, default=20, help="steps per logged window (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="windows left out at the start (default 3)")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--neighbours", nargs="*", default=list(NEIGHBOURS), choices=list(NEIGHBOURS))
    parser.add_argument("--smoke", action="store_true", help="check that the script runs; the numbers mean nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo recipe")
    parser.add_argument(
        "--out", default=None, help="the JSON file (default benchmarks/results/shared_cpu.json; --smoke: none)"
    )
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    if load > 0.5 and not args.smoke:
        print(
            f"warning: load average {load:.2f} before the benchmark: other processes are running, the figures "
            f"will not be those of a quiet machine",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="deepmim-shared-cpu-") as tmp:
        results = [
            run_case(s, n, args.steps, args.log_every, args.warmup, Path(tmp), args.overrides)
            for s in args.settings
            for n in args.neighbours
        ]
    results = summarise(results)
    print(table(results))
    if args.smoke:
        return 0
    report = {
        "overrides": args.overrides,
        "steps": args.steps,
        "log_every_steps": args.log_every,
        "warmup_windows": args.warmup,
        "cores": len(os.sched_getaffinity(0)),
        "load_average_before": load,
        "results": results,
    }
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from machine import machine_stamp

        report["machine"] = machine_stamp()
    except ImportError:
        pass
    out = Path(args.out or Path(__file__).parent / "results" / "shared_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
