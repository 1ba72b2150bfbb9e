"""`deepmim knn` and `deepmim probe-layers`: classifiers on cached frozen-encoder features."""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from ..analysis.features import check_classes, extract_features, frozen_encoder, resolve_blocks
from ..analysis.plots import plot_layers
from ..analysis.probes import knn_classify, train_linear_probe
from ..analysis.report import short_names
from ..checkpoint import CheckpointError, atomic_save, make_checkpoint, read_checkpoint
from ..config.loader import load_config
from ..config.schema import ModelConfig, ProbeConfig
from ..models.encoder import MaskedViTEncoder
from ..training.jsonfile import write_json
from .scored_data import data_record


def load_probe_config(recipe: Optional[str] = None, overrides: Iterable[str] = ()) -> ProbeConfig:
    return load_config(ProbeConfig, recipe, overrides)


def _features(ckpt: str, cfg: ProbeConfig, blocks: Optional[Sequence[int]], encoder=None):
    encoder = encoder if encoder is not None else frozen_encoder(ckpt, cfg.features.preset)
    blocks = resolve_blocks(blocks, encoder.depth)
    train = extract_features(ckpt, cfg.data, cfg.features.train_split, cfg.features, blocks, encoder)
    val = extract_features(ckpt, cfg.data, cfg.features.val_split, cfg.features, blocks, encoder)
    return blocks, train, val, check_classes(train, val, cfg.num_classes)


def scored_images(cfg: ProbeConfig, train, val) -> Dict[str, int]:
    """{split: images read} of a probe: the training split the classifier is fitted on, the split it scores."""
    return {cfg.features.train_split: int(train.labels.numel()), cfg.features.val_split: int(val.labels.numel())}


def run_knn(
    checkpoint: str, cfg: ProbeConfig, data_source: str = "given", scored: Optional[Dict] = None
) -> Dict[int, Dict[str, float]]:
    """k-NN accuracy per block (default: the last block only). `scored`, when given, receives the data
    record (tasks/scored_data.py: dataset, `data_source`, images per split)."""
    encoder = frozen_encoder(checkpoint, cfg.features.preset)
    blocks = cfg.features.blocks or [encoder.depth]
    blocks, train, val, num_classes = _features(checkpoint, cfg, blocks, encoder)
    if scored is not None:
        scored.update(data_record(cfg.data, data_source, scored_images(cfg, train, val)))
    return {
        b: knn_classify(train.blocks[b], train.labels, val.blocks[b], val.labels, num_classes, cfg.knn) for b in blocks
    }


def write_initial_checkpoint(model: ModelConfig, seed: int, path: Path) -> Path:
    """The untrained encoder a `deepmim pretrain` run with train.seed=`seed` starts from (the skeleton seeds
    torch, then builds the encoder first), saved as a pre-training checkpoint (encoder weights + config)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        encoder = MaskedViTEncoder(model.encoder)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    atomic_save(make_checkpoint("pretrain", state, {"model": dataclasses.asdict(model)}, epoch=0, step=0), path)
    return path


def random_init_of(checkpoint: str, out: Path) -> str:
    """out/random-init.pt: the encoder `checkpoint`'s run started from (same architecture, same train.seed)."""
    ckpt = read_checkpoint(checkpoint)
    model = ckpt.model_config()
    if model is None:
        raise CheckpointError(
            f"--vs-random needs a deepmim pre-training checkpoint (it rebuilds the untrained "
            f"encoder from the config inside); {checkpoint} is {ckpt.kind}"
        )
    seed = int(ckpt.config.get("train", {}).get("seed", 0))
    return str(write_initial_checkpoint(model, seed, out / "random-init.pt"))


def best_block(result: Dict[int, Dict[str, float]]):
    """(block, top-1) of the block whose probe scored highest."""
    block = max(result, key=lambda b: result[b]["top1"])
    return block, result[block]["top1"]


def compare_with_random(
    results: Dict[str, Dict[int, Dict[str, float]]], names: Dict[str, str], trained: str, random_init: str
) -> str:
    """One line: the trained checkpoint's best block against the untrained encoder's best block."""
    (tb, tacc), (rb, racc) = best_block(results[trained]), best_block(results[random_init])
    verdict = "better than" if tacc > racc else "not better than"
    return (
        f"best block against best block: {names[trained]} {100 * tacc:.1f}% (block {tb}) vs random init "
        f"{100 * racc:.1f}% (block {rb}): {100 * (tacc - racc):+.1f} points, {verdict} the untrained encoder"
    )


def run_probe_layers(
    checkpoints: List[str],
    cfg: ProbeConfig,
    out_dir: Optional[str] = None,
    vs_random: bool = False,
    data_source: str = "given",
) -> Dict:
    """A linear probe per block per checkpoint. Writes layers.json, layers.csv, layers.png to out_dir.
    vs_random: the untrained encoder the first checkpoint's run started from is probed too, and
    the result carries `comparison`, best block against best block."""
    out = Path(out_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = list(checkpoints)
    if vs_random:
        checkpoints.append(random_init_of(checkpoints[0], out))
    results: Dict[str, Dict[int, Dict[str, float]]] = {}
    timings: Dict[str, Dict[str, float]] = {}
    images: Dict[str, int] = {}
    for ckpt in checkpoints:
        t0 = time.perf_counter()
        blocks, train, val, num_classes = _features(ckpt, cfg, cfg.features.blocks)
        images = scored_images(cfg, train, val)
        t1 = time.perf_counter()
        results[ckpt] = {
            b: train_linear_probe(train.blocks[b], train.labels, val.blocks[b], val.labels, num_classes, cfg.probe)
            for b in blocks
        }
        timings[ckpt] = {"features_s": round(t1 - t0, 3), "probes_s": round(time.perf_counter() - t1, 3)}
    names = short_names(checkpoints)
    from ..config.loader import to_dict

    data = data_record(cfg.data, data_source, images)
    report = {
        "checkpoints": {names[c]: c for c in checkpoints},
        "data": data,
        "config": to_dict(cfg),
        "timings": timings,
        "results": {names[c]: {str(b): r for b, r in res.items()} for c, res in results.items()},
    }
    comparison = compare_with_random(results, names, checkpoints[0], checkpoints[-1]) if vs_random else None
    if comparison:
        report["comparison"] = comparison
    write_json(out / "layers.json", report)
    all_blocks = sorted({b for res in results.values() for b in res})
    with open(out / "layers.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "block", "top1", "top5", "val_loss", "train_loss"])
        for c, res in results.items():
            for b, r in res.items():
                w.writerow([names[c], b, r["top1"], r.get("top5", ""), r["val_loss"], r["train_loss"]])
    plot_layers({names[c]: {b: r["top1"] for b, r in res.items()} for c, res in results.items()}, out / "layers.png")
    return {
        "results": results,
        "names": names,
        "blocks": all_blocks,
        "out_dir": out,
        "comparison": comparison,
        "data": data,
    }


def format_table(results: Dict[str, Dict[int, Dict[str, float]]], names: Dict[str, str]) -> str:
    """block x checkpoint top-1 (%) table."""
    blocks = sorted({b for res in results.values() for b in res})
    cols = [names[c] for c in results]
    width = max(8, *(len(c) for c in cols))
    lines = ["block  " + "  ".join(f"{c:>{width}}" for c in cols)]
    for b in blocks:
        cells = [
            f"{100 * results[c][b]['top1']:>{width}.2f}" if b in results[c] else f"{'-':>{width}}" for c in results
        ]
        lines.append(f"{b:>5}  " + "  ".join(cells))
    return "\n".join(lines)
