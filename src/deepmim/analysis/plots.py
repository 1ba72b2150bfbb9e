"""Pictures of a pre-training run: loss curves per head and reconstructions per head."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..targets import patchify, unpatchify  # noqa: E402
from ..training.logging import read_metrics  # noqa: E402


def plot_loss_curves(metrics_path: Path, out_path: Path) -> List[str]:
    """One curve per supervised head plus the weighted total, against the optimizer step.
    Returns the plotted series names."""
    rows = [r for r in read_metrics(metrics_path) if r.get("type") == "train"]
    if not rows:
        raise ValueError(f"{metrics_path} has no training rows to plot")
    keys = ["loss"] + sorted((k for k in rows[0] if k.startswith("loss_block")), key=lambda k: int(k[10:]))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    steps = [r["step"] for r in rows]
    for key in keys:
        label = "total (weighted sum)" if key == "loss" else f"head @ block {key[10:]}"
        style = {"linewidth": 2.4, "color": "black"} if key == "loss" else {"linewidth": 1.4}
        ax.plot(steps, [float(r[key]) for r in rows], label=label, **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (masked patches)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("DeepMIM pre-training loss per supervised head")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return keys


@torch.no_grad()
def reconstruction_grid(model, images: torch.Tensor, noise: torch.Tensor, mean: Sequence[float],
                        std: Sequence[float]) -> Dict[str, torch.Tensor]:
    """Rows of (N, 3, H, W) images in [0, 1]: original, masked input, then each head's
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
        rows[f"block {block}"] = unpatchify(pasted, patch, images.shape[1])
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
            ax.imshow(rows[name][c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("original / masked input / reconstruction by each supervised head", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
