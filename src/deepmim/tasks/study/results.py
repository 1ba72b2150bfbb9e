"""results.json: every recorded number per arm and seed, their mean and sample std over seeds, the machine.

Per seed, each stage's result as its record holds it; per arm, `aggregate` reduces those to
{mean, std, n, values} (std: sample standard deviation over seeds, None for one seed). Tables, figures
and the report read only this structure.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from ...config.loader import to_dict
from .arms import TRAINING_STAGES

UNITS = {
    "accuracy": "percent (top-1 / top-5 of the val split)",
    "seconds": "wall-clock seconds per stage",
    "flops": "floating-point operations (FlopCounterMode count per image x images processed)",
    "attention": "pixels (attention-weighted mean distance between patch centres)",
}
EVALUATION_STAGES = ("probe", "attention", "convergence")


def mean_std(values: List[Optional[float]]) -> Dict[str, Any]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def _collect(seeds: List[Dict], path: List[str]) -> List[Optional[float]]:
    out = []
    for s in seeds:
        node: Any = s
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        out.append(node)
    return out


def _per_block(seeds: List[Dict], stage: str, kind: str, metric: Optional[str] = "top1") -> Dict:
    """{pool: {block: mean_std}} of seeds[i][stage][kind][pool][block][metric]."""
    pools = {p for s in seeds for p in s.get(stage, {}).get(kind, {})}
    out = {}
    for pool in sorted(pools):
        blocks = sorted({b for s in seeds for b in s.get(stage, {}).get(kind, {}).get(pool, {})}, key=int)
        out[pool] = {
            b: mean_std(_collect(seeds, [stage, kind, pool, b] + ([metric] if metric else []))) for b in blocks
        }
    return out


def aggregate_arm(seed_results: Dict[str, Dict]) -> Dict[str, Any]:
    seeds = list(seed_results.values())
    agg: Dict[str, Any] = {"linear": _per_block(seeds, "probe", "linear"), "knn": _per_block(seeds, "probe", "knn")}
    if any("finetune" in s for s in seeds):
        agg["finetune_top1"] = mean_std(_collect(seeds, ["finetune", "top1"]))
        agg["finetune_best_top1"] = mean_std(_collect(seeds, ["finetune", "best_top1"]))
    if any("attention" in s for s in seeds):
        depth = max(len(s["attention"]["mean"]) for s in seeds if "attention" in s)
        agg["attention_mean"] = {
            str(b + 1): mean_std([s["attention"]["mean"][b] for s in seeds if "attention" in s]) for b in range(depth)
        }
        agg["attention_spread"] = {
            str(b + 1): mean_std([s["attention"]["spread"][b] for s in seeds if "attention" in s]) for b in range(depth)
        }
        agg["attention_uniform_px"] = next(s["attention"]["uniform_px"] for s in seeds if "attention" in s)
    if any("convergence" in s for s in seeds):
        agg["convergence"] = {
            kind: {
                pool: {
                    e: {b: mean_std(_collect(seeds, ["convergence", kind, pool, e, b])) for b in sorted(per_e, key=int)}
                    for e, per_e in sorted(per_pool.items(), key=lambda t: int(t[0]))
                }
                for pool, per_pool in next(s["convergence"][kind] for s in seeds if "convergence" in s).items()
            }
            for kind in ("linear", "knn")
        }
    agg["seconds"] = _costs(seeds, "seconds")
    agg["flops"] = _costs(seeds, "flops")
    agg["pretrain_epochs"] = next(
        (s[stage]["epochs"] for s in seeds for stage in TRAINING_STAGES if "epochs" in s.get(stage, {})), 0
    )  # of the arm's training stage, if it trains
    return agg


def _costs(seeds: List[Dict], key: str) -> Dict[str, Any]:
    """Per stage, pre-training + fine-tuning ("training") and everything ("total"), over seeds. A fine-tuning
    run's FLOPs are its training steps; its per-epoch val passes (eval_flops) count as evaluation."""

    def value(s: Dict, stage: str) -> float:
        return s.get(stage, {}).get(key) or 0.0

    out = {
        stage: mean_std([s[stage].get(key) for s in seeds if stage in s])
        for stage in TRAINING_STAGES + EVALUATION_STAGES + ("finetune",)
        if any(stage in s for s in seeds)
    }
    training = [sum(value(s, st) for st in TRAINING_STAGES + ("finetune",)) for s in seeds]
    evaluation = [
        sum(value(s, st) for st in EVALUATION_STAGES)
        + (s.get("finetune", {}).get("eval_flops") or 0.0 if key == "flops" else 0.0)
        for s in seeds
    ]
    out["training"] = mean_std(training)
    out["evaluation"] = mean_std(evaluation)
    out["total"] = mean_std([t + e for t, e in zip(training, evaluation)])
    return out


def build_results(
    cfg, arms: List[Any], per_arm: Dict[str, Dict[str, Dict]], command: str, machine: Dict[str, Any]
) -> Dict[str, Any]:
    """The whole results.json; `per_arm` = {arm name: {seed: {stage: result}}} (arms in study order)."""
    out = {
        "title": cfg.title,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "units": UNITS,
        "seeds": list(cfg.seeds),
        "pools": list(cfg.evaluate.pools),
        "config": to_dict(cfg),
        "arms": {},
    }
    for arm in arms:
        seeds = per_arm.get(arm.name, {})
        if not seeds:
            continue
        out["arms"][arm.name] = {
            "kind": arm.kind,
            "model": describe_model(arm.model_config()),
            "seeds": seeds,
            "aggregate": aggregate_arm(seeds),
        }
    return out


def describe_model(model) -> Dict[str, Any]:
    e = model.encoder
    return {
        "preset": model.preset,
        "embed_dim": e.embed_dim,
        "depth": e.depth,
        "num_heads": e.num_heads,
        "img_size": e.img_size,
        "patch_size": e.patch_size,
        "supervised_blocks": sorted(h.block for h in model.heads),
        "target": model.target.get("name"),
        "mask_ratio": model.mask_ratio,
    }


# ----------------------------------------------------------------------------- the machine


def _run(cmd: List[str], cwd: Optional[Path] = None) -> Optional[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    text = _run(["lscpu"]) or ""
    match = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def machine_info() -> Dict[str, Any]:
    """What the numbers were measured on: CPU (lscpu), GPU, torch, bf16, the git commit of the code."""
    import torch

    from ...training import resolve_device, resolve_precision

    device = resolve_device("auto")
    here = Path(__file__).resolve().parent
    commit = _run(["git", "rev-parse", "HEAD"], cwd=here)
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here) if commit else None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "precision_auto": resolve_precision("auto", device),
        "bf16": resolve_precision("auto", device) == "bf16",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "deepmim": _package_version(),
        "git_commit": commit,
        "git_dirty": bool(dirty) if commit else None,
    }


def _package_version() -> str:
    """The installed deepmim's version (from its metadata: tasks/ does not import the package root)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deepmim")
    except PackageNotFoundError:
        return "unknown"
