"""`deepmim knn` and `deepmim probe-layers`: classifiers on cached frozen-encoder features."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from ..config.loader import load_config
from ..config.schema import ProbeConfig
from ..analysis.features import check_classes, extract_features, frozen_encoder, resolve_blocks
from ..analysis.plots import plot_layers
from ..analysis.probes import knn_classify, train_linear_probe
from ..analysis.report import short_names


def load_probe_config(recipe: Optional[str] = None, overrides: Iterable[str] = ()) -> ProbeConfig:
    return load_config(ProbeConfig, recipe, overrides)


def _features(ckpt: str, cfg: ProbeConfig, blocks: Optional[Sequence[int]], encoder=None):
    encoder = encoder if encoder is not None else frozen_encoder(ckpt, cfg.features.preset)
    blocks = resolve_blocks(blocks, encoder.depth)
    train = extract_features(ckpt, cfg.data, cfg.features.train_split, cfg.features, blocks, encoder)
    val = extract_features(ckpt, cfg.data, cfg.features.val_split, cfg.features, blocks, encoder)
    return blocks, train, val, check_classes(train, val, cfg.num_classes)


def run_knn(checkpoint: str, cfg: ProbeConfig) -> Dict[int, Dict[str, float]]:
    """k-NN accuracy per block (default: the last block only)."""
    encoder = frozen_encoder(checkpoint, cfg.features.preset)
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
    names = short_names(checkpoints)
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
