"""Pictures of a pre-training run: loss curves per head and reconstructions per head."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..models.head_names import head_loss_keys, loss_block, row_name  # noqa: E402
from ..targets import patchify, unpatchify  # noqa: E402
from ..training.metrics_log import read_metrics  # noqa: E402


def plot_loss_curves(metrics_path: Path, out_path: Path) -> List[str]:
    """One curve per supervised head plus the weighted total, against the optimizer step.
    Returns the plotted series names."""
    rows = [r for r in read_metrics(metrics_path) if r.get("type") == "train"]
    if not rows:
        raise ValueError(f"{metrics_path} has no training rows to plot")
    keys = ["loss"] + head_loss_keys(rows[0])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    steps = [r["step"] for r in rows]
    for key in keys:
        label = "total (weighted sum)" if key == "loss" else f"head @ block {loss_block(key)}"
        style = {"linewidth": 2.4, "color": "black"} if key == "loss" else {"linewidth": 1.4}
        ax.plot(steps, [float(r[key]) for r in rows], label=label, **style)
    _finish(
        fig,
        ax,
        out_path,
        "optimizer step",
        "loss (masked patches)",
        "DeepMIM pre-training loss per supervised head",
        legend_size=8,
        log_y=True,
    )
    return keys


def _finish(
    fig, ax, out_path: Path, xlabel: str, ylabel: str, title: str, legend_size: int = 7, log_y: bool = False
) -> None:
    """The plots' shared look: labels, grid, legend; saved and closed."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both" if log_y else "major")
    ax.legend(fontsize=legend_size)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)


@torch.no_grad()
def reconstruction_grid(
    model, images: torch.Tensor, noise: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> Dict[str, torch.Tensor]:
    """Rows of (N, C, H, W) images in [0, 1] (the data's own colours: C = 1 for grey data): original, masked input, then each head's
    reconstruction (predicted masked patches pasted into the visible ones, as MAE shows it)."""
    model.eval()
    out = model(images, noise=noise)
    patch = model.cfg.encoder.patch_size
    mask = out.mask.unsqueeze(-1)  # (N, L, 1), 1 = masked
    original = patchify(images.float(), patch)
    rows = {"original": images.float(), "masked": unpatchify(original * (1 - mask), patch, images.shape[1])}
    for block, pred in out.preds.items():
        pixels = model.target_of(block).to_pixels(pred, images)
        if pixels is None:
            continue
        pasted = original * (1 - mask) + pixels * mask
        rows[row_name(block)] = unpatchify(pasted, patch, images.shape[1])
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return {name: (x.cpu() * s + m).clamp(0, 1) for name, x in rows.items()}


def plot_reconstructions(rows: Dict[str, torch.Tensor], out_path: Path) -> None:
    names = list(rows)
    n = rows[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), n, figsize=(1.25 * n + 1.2, 1.25 * len(names)), dpi=120, squeeze=False)
    for r, name in enumerate(names):
        for c in range(n):
            ax = axes[r][c]
            image = rows[name][c].permute(1, 2, 0).numpy()
            if image.shape[-1] == 1:  # grey data in grey, not through a colour map
                ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("original / masked input / reconstruction by each supervised head", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)


# ---- `deepmim analyze` ----------------------------------------------------------------------------


def _colors(n: int):
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_layer_accuracy(linear: Dict[str, Dict[int, float]], knn: Dict[str, Dict[int, float]], out_path: Path) -> None:
    """Top-1 (%) against the block: solid = linear probe, dashed = k-NN, one colour per checkpoint."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for color, name in zip(_colors(len(linear) or len(knn)), list(linear or knn)):
        for series, style, kind in ((linear, "-o", "linear"), (knn, "--s", "k-NN")):
            if name in series and series[name]:
                blocks = sorted(series[name])
                ax.plot(
                    blocks,
                    [100 * series[name][b] for b in blocks],
                    style,
                    color=color,
                    markersize=4,
                    label=f"{name} ({kind})",
                )
    _finish(fig, ax, out_path, "encoder block", "top-1 (%)", "Per-layer accuracy of frozen features")


def plot_attention_distance(
    distances: Dict[str, "torch.Tensor"], out_path: Path, uniform: Dict[str, float] = None
) -> None:
    """Blocks on x, one dot per head (mean attention distance in pixels), checkpoints side by side;
    `uniform`: {label: distance of uniform attention} drawn as dashed reference lines."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, value in (uniform or {}).items():
        ax.axhline(value, color="gray", linestyle="--", linewidth=1, label=label)
    n = len(distances)
    for i, (color, (name, d)) in enumerate(zip(_colors(n), distances.items())):
        offset = (i - (n - 1) / 2) * (0.6 / max(n, 1))
        depth, heads = d.shape
        xs = [b + 1 + offset for b in range(depth) for _ in range(heads)]
        ax.scatter(xs, d.flatten().tolist(), s=14, color=color, alpha=0.8, label=name)
    _finish(
        fig,
        ax,
        out_path,
        "encoder block",
        "mean attention distance (pixels)",
        "Attention distance of every head (one dot per head)",
    )


def plot_cka(
    matrix,
    row_blocks: Sequence[int],
    col_blocks: Sequence[int],
    title: str,
    out_path: Path,
    row_label: str = "block",
    col_label: str = "block",
) -> None:
    """Heat map of linear CKA (0..1) with the values written in the cells."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(col_blocks) + 1.2, 1.0 + 0.45 * len(row_blocks)), dpi=110)
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.set_xticks(range(len(col_blocks)), [str(b) for b in col_blocks])
    ax.set_yticks(range(len(row_blocks)), [str(b) for b in row_blocks])
    if len(row_blocks) * len(col_blocks) <= 400:
        for i in range(len(row_blocks)):
            for j in range(len(col_blocks)):
                v = matrix[i][j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="black" if v > 0.6 else "white")
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title, fontsize=8, wrap=True)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)


def plot_convergence(
    series: Dict[int, Dict[int, float]], title: str, out_path: Path, ylabel: str = "linear-probe top-1 (%)"
) -> None:
    """Accuracy against the number of finished epochs, one line per block: {block: {epoch: acc}}."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0), dpi=110)
    cmap = plt.get_cmap("viridis")
    blocks = sorted(series)
    for i, b in enumerate(blocks):
        epochs = sorted(series[b])
        ax.plot(
            epochs,
            [100 * series[b][e] for e in epochs],
            "-o",
            markersize=3,
            color=cmap(i / max(1, len(blocks) - 1)),
            label=f"block {b}",
        )
    ax.set_xlabel("epochs trained")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)


def plot_last_head_losses(metrics: Dict[str, Path], out_path: Path) -> Dict[str, str]:
    """The loss of each run's head on its last block against the optimizer step (the one loss MAE and
    DeepMIM runs share). Returns {run: the plotted key}."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    plotted = {}
    for color, (name, path) in zip(_colors(len(metrics)), metrics.items()):
        rows = [r for r in read_metrics(path) if r.get("type") == "train"]
        keys = head_loss_keys(rows[0] if rows else {})
        if not keys:
            continue
        key = keys[-1]
        ax.plot(
            [r["step"] for r in rows],
            [float(r[key]) for r in rows],
            color=color,
            label=f"{name}: head @ block {loss_block(key)}",
        )
        plotted[name] = key
    _finish(
        fig,
        ax,
        out_path,
        "optimizer step",
        "loss (masked patches)",
        "Loss of the last block's head, runs side by side",
        log_y=True,
    )
    return plotted


def plot_layers(series: Dict[str, Dict[int, float]], path: Path) -> None:
    """Bar chart (probe-layers' layers.png): blocks on x, one bar per checkpoint in each group, top-1 (%) on y."""
    blocks = sorted({b for s in series.values() for b in s})
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(blocks) * n + 2), 4.0), dpi=120)
    for i, (name, s) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j, b in enumerate(blocks) if b in s]
        ax.bar(xs, [100 * s[b] for b in blocks if b in s], width=width, label=name)
    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks])
    ax.set_xlabel("encoder block")
    ax.set_ylabel("linear-probe top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Linear probe per layer")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
