"""The study's PNGs, drawn from results.json only: error bars are the sample std over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .arms import training_stage  # noqa: E402
from .tables import best_block  # noqa: E402


def _series(per_block: Dict[str, Dict[str, Any]]):
    blocks = sorted((b for b, ms in per_block.items() if ms.get("mean") is not None), key=int)
    return (
        [int(b) for b in blocks],
        [per_block[b]["mean"] for b in blocks],
        [per_block[b]["std"] or 0.0 for b in blocks],
    )


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def probe_per_block(results: Dict[str, Any], path: Path) -> str:
    pools = results["pools"]
    fig, axes = plt.subplots(1, len(pools), figsize=(5.5 * len(pools), 4.0), dpi=110, squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, pool in zip(axes[0], pools):
        for i, (name, arm) in enumerate(results["arms"].items()):
            for kind, style in (("linear", "-o"), ("knn", "--s")):
                xs, ys, es = _series(arm["aggregate"][kind].get(pool, {}))
                if xs:
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=es,
                        fmt=style,
                        color=colors(i % 10),
                        markersize=4,
                        capsize=3,
                        label=f"{name} ({'linear' if kind == 'linear' else 'k-NN'})",
                    )
        ax.set_title(f"{pool} pooling")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("encoder block")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Frozen features per block: linear probe (solid), k-NN (dashed); mean ± std over seeds", fontsize=9)
    return _save(fig, path)


def convergence(results: Dict[str, Any], path: Path) -> str:
    """Best-block linear probe along pre-training, against epochs and against pre-training FLOPs."""
    pool = results["config"]["evaluate"]["convergence_pools"][0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), dpi=110)
    colors = plt.get_cmap("tab10")
    for i, (name, arm) in enumerate(results["arms"].items()):
        agg = arm["aggregate"]
        series = agg.get("convergence", {}).get("linear", {}).get(pool, {})
        if not series:
            continue
        epochs = sorted(series, key=int)
        best = [best_block(series[e])[1] for e in epochs]
        per_epoch = (agg["flops"][training_stage(arm["kind"])]["mean"] or 0) / max(agg["pretrain_epochs"], 1)
        ys, es = [b["mean"] for b in best], [b["std"] or 0.0 for b in best]
        for ax, xs in ((axes[0], [int(e) for e in epochs]), (axes[1], [int(e) * per_epoch for e in epochs])):
            ax.errorbar(xs, ys, yerr=es, fmt="-o", color=colors(i % 10), markersize=4, capsize=3, label=name)
    axes[0].set_xlabel("pre-training epochs")
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    axes[1].set_xlabel("pre-training FLOPs")
    for ax in axes:
        ax.set_ylabel(f"best-block linear probe top-1 (%), {pool}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Convergence: equal epochs (left), equal compute (right)", fontsize=9)
    return _save(fig, path)


def attention_distance(results: Dict[str, Any], path: Path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), dpi=110)
    colors = plt.get_cmap("tab10")
    uniform = set()
    for i, (name, arm) in enumerate(results["arms"].items()):
        agg = arm["aggregate"]
        if "attention_mean" not in agg:
            continue
        uniform.add(round(agg["attention_uniform_px"], 2))
        for ax, key in ((axes[0], "attention_mean"), (axes[1], "attention_spread")):
            xs, ys, es = _series(agg[key])
            ax.errorbar(xs, ys, yerr=es, fmt="-o", color=colors(i % 10), markersize=4, capsize=3, label=name)
    for u in sorted(uniform):
        axes[0].axhline(u, color="gray", linestyle="--", linewidth=1, label=f"uniform attention ({u:.1f} px)")
    axes[0].set_ylabel("mean attention distance over heads (px)")
    axes[1].set_ylabel("spread over heads: std (px)")
    for ax in axes:
        ax.set_xlabel("encoder block")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Attention distance per block (mean ± std over seeds)", fontsize=9)
    return _save(fig, path)


def accuracy_vs_flops(results: Dict[str, Any], path: Path) -> str:
    """Fine-tuned top-1 (or the best-block probe without fine-tuning) against training FLOPs."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    colors = plt.get_cmap("tab10")
    pool = results["pools"][-1]
    what = "fine-tune top-1 (%)"
    for i, (name, arm) in enumerate(results["arms"].items()):
        agg = arm["aggregate"]
        ms = agg.get("finetune_top1")
        if ms is None or ms["mean"] is None:
            what = f"best-block linear probe top-1 (%), {pool}"
            ms = best_block(agg["linear"].get(pool, {}))[1]
        flops = agg["flops"]["training"]["mean"]
        if ms is None or not flops:
            continue
        ax.errorbar(
            [flops],
            [ms["mean"]],
            yerr=[ms["std"] or 0.0],
            fmt="o",
            color=colors(i % 10),
            capsize=4,
            markersize=7,
            label=name,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (pre-training + fine-tuning)")
    ax.set_ylabel(what)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("Accuracy against compute (mean ± std over seeds)", fontsize=9)
    return _save(fig, path)


def write_figures(results: Dict[str, Any], out: Path) -> List[Dict[str, str]]:
    """Every figure the results allow; returns [{section, file, caption}] for the report."""
    figures = [
        (
            "probe",
            probe_per_block(results, out / "probe_per_block.png"),
            "linear probe and k-NN top-1 of every block, each pooling, mean ± std over seeds",
        )
    ]
    if any(a["aggregate"].get("convergence") for a in results["arms"].values()):
        figures.append(
            (
                "convergence",
                convergence(results, out / "convergence.png"),
                "best-block linear probe after each saved pre-training epoch, against epochs and FLOPs",
            )
        )
    if any("attention_mean" in a["aggregate"] for a in results["arms"].values()):
        figures.append(
            (
                "attention",
                attention_distance(results, out / "attention_distance.png"),
                "mean attention distance of the heads of every block, and their spread",
            )
        )
    figures.append(
        (
            "headline",
            accuracy_vs_flops(results, out / "accuracy_vs_flops.png"),
            "accuracy against the training compute of each arm",
        )
    )
    return [{"section": s, "file": f, "caption": c} for s, f, c in figures]
