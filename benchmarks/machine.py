"""What a benchmark number was measured on, stamped into every JSON file the benchmark scripts write.

A timing means nothing without its machine and its code: `machine_stamp()` records the CPU model
(`lscpu`), the GPU, whether the device computes bf16 natively, torch's version, the git commit of the
code (and whether the working tree had uncommitted changes) and the UTC date, so a result file read
months later still says where it came from. Result folders are named from the same facts:
`results_folder_name()` gives `<date>_<machine>_<commit>`.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from deepmim.training.precision import cpu_supports_bf16

HERE = Path(__file__).resolve().parent


def _run(cmd: List[str]) -> Optional[str]:
    try:
        return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    match = re.search(r"^Model name:\s*(.+)$", _run(["lscpu"]) or "", re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def cpu_bf16_flags() -> List[str]:
    """The CPU's native bf16 instruction sets (AVX512-BF16, AMX-BF16); empty where bf16 is emulated."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16)\b", text)))


def machine_stamp(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """CPU/GPU model, native bf16, torch, commit and date; `device` is the one the benchmark ran on."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_supports_bf16()
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"]) if commit else None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "gpu": gpu,
        "device": str(device),
        "bf16_native": bool(bf16),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": bool(dirty) if commit else None,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def results_folder_name(machine: str) -> str:
    """`<date>_<machine>_<commit>`, the name of a folder of results under benchmarks/results/."""
    commit = _run(["git", "rev-parse", "--short", "HEAD"]) or "nocommit"
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return f"{date}_{machine}_{commit}"


if __name__ == "__main__":  # bash: OUTDIR=benchmarks/results/$(python benchmarks/machine.py folder my-cpu)
    import json
    import sys

    if sys.argv[1:2] == ["folder"]:
        print(results_folder_name(sys.argv[2] if len(sys.argv) > 2 else "cpu"))
    else:
        print(json.dumps(machine_stamp(), indent=2))
