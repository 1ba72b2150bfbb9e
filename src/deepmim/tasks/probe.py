"""`deepmim knn` and `deepmim probe-layers`: classifiers on cached frozen-encoder features."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from ..config.loader import load_config
from ..config.schema import ProbeConfig
from ..analysis.features import check_classes, extract_features, load_encoder, resolve_blocks
from ..analysis.probes import knn_classify, train_linear_probe


def load_probe_config(recipe: Optional[str] = None, overrides: Iterable[str] = ()) -> ProbeConfig:
    return load_config(ProbeConfig, recipe, overrides)


def _features(ckpt: str, cfg: ProbeConfig, blocks: Optional[Sequence[int]], encoder=None):
    encoder = encoder if encoder is not None else load_encoder(ckpt, cfg.features.preset)
    blocks = resolve_blocks(blocks, encoder.depth)
    train = extract_features(ckpt, cfg.data, cfg.features.train_split, cfg.features, blocks, encoder)
    val = extract_features(ckpt, cfg.data, cfg.features.val_split, cfg.features, blocks, encoder)
    return blocks, train, val, check_classes(train, val, cfg.num_classes)


def run_knn(checkpoint: str, cfg: ProbeConfig) -> Dict[int, Dict[str, float]]:
    """k-NN accuracy per block (default: the last block only)."""
    encoder = load_encoder(checkpoint, cfg.features.preset)
    blocks = cfg.features.blocks or [encoder.depth]
    blocks, train, val, num_classes = _features(checkpoint, cfg, blocks, encoder)
    return {b: knn_classify(train.blocks[b], train.labels, val.blocks[b], val.labels, num_classes, cfg.knn)
            for b in blocks}


def run_probe_layers(checkpoints: List[str], cfg: ProbeConfig, out_dir: Optional[str] = None) -> Dict:
    """A linear probe per block per checkpoint. Writes layers.json, layers.csv, layers.png to out_dir."""
    out = Path(out_dir or cfg.output_dir)
    results: Dict[str, Dict[int, Dict[str, float]]] = {}
    timings: Dict[str, Dict[str, float]] = {}
    for ckpt in checkpoints:
        t0 = time.perf_counter()
        blocks, train, val, num_classes = _features(ckpt, cfg, cfg.features.blocks)
        t1 = time.perf_counter()
        results[ckpt] = {b: train_linear_probe(train.blocks[b], train.labels, val.blocks[b], val.labels,
                                               num_classes, cfg.probe) for b in blocks}
        timings[ckpt] = {"features_s": round(t1 - t0, 3), "probes_s": round(time.perf_counter() - t1, 3)}
    names = _short_names(checkpoints)
    out.mkdir(parents=True, exist_ok=True)
    from ..config.loader import to_dict
    report = {"checkpoints": {names[c]: c for c in checkpoints}, "config": to_dict(cfg), "timings": timings,
              "results": {names[c]: {str(b): r for b, r in res.items()} for c, res in results.items()}}
    (out / "layers.json").write_text(json.dumps(report, indent=2))
    all_blocks = sorted({b for res in results.values() for b in res})
    with open(out / "layers.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "block", "top1", "top5", "val_loss", "train_loss"])
        for c, res in results.items():
            for b, r in res.items():
                w.writerow([names[c], b, r["top1"], r.get("top5", ""), r["val_loss"], r["train_loss"]])
    plot_layers({names[c]: {b: r["top1"] for b, r in res.items()} for c, res in results.items()},
                out / "layers.png")
    return {"results": results, "names": names, "blocks": all_blocks, "out_dir": out}


def _short_names(checkpoints: List[str]) -> Dict[str, str]:
    """Distinct short labels: the file name, or parent/file when names collide."""
    stems = [Path(c).name for c in checkpoints]
    if len(set(stems)) == len(stems):
        return dict(zip(checkpoints, stems))
    return {c: str(Path(Path(c).parent.name) / Path(c).name) + (f" #{i}" if checkpoints.count(c) > 1 else "")
            for i, c in enumerate(checkpoints)}


def format_table(results: Dict[str, Dict[int, Dict[str, float]]], names: Dict[str, str]) -> str:
    """block x checkpoint top-1 (%) table."""
    blocks = sorted({b for res in results.values() for b in res})
    cols = [names[c] for c in results]
    width = max(8, *(len(c) for c in cols))
    lines = ["block  " + "  ".join(f"{c:>{width}}" for c in cols)]
    for b in blocks:
        cells = [f"{100 * results[c][b]['top1']:>{width}.2f}" if b in results[c] else f"{'-':>{width}}"
                 for c in results]
        lines.append(f"{b:>5}  " + "  ".join(cells))
    return "\n".join(lines)


def plot_layers(series: Dict[str, Dict[int, float]], path: Path) -> None:
    """Bar chart: blocks on x, one bar per checkpoint in each group, top-1 (%) on y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
