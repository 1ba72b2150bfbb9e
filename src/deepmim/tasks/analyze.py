"""`deepmim analyze`: the paper's claims, measured on checkpoints side by side.

Per checkpoint: per-layer linear probe (probe-layers on the shared feature cache) and k-NN, attention
distance of every head, linear CKA between blocks (and between the same block of two checkpoints of
equal depth), reconstructions by every head under one fixed mask, the run's loss curves and, where the
run kept `checkpoint-epochNNNN.pt` files, probe and k-NN per block along training (convergence).
Writes analysis.json and metrics.csv (every number), one PNG per figure and report.html.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
from torch.utils.data import DataLoader

from ..analysis.features import extract_features, frozen_encoder, resolve_blocks
from ..checkpoint import epoch_checkpoints
from ..models.heads import loss_block, row_block
from ..config.loader import load_config, to_dict
from ..config.schema import AnalyzeConfig, DataConfig
from ..analysis.report import short_names
from .probe import run_knn, run_probe_layers

logger = logging.getLogger(__name__)

MEASURES = ("probe", "knn", "attention", "cka", "reconstruction", "loss", "convergence")


def load_analyze_config(recipe: Optional[str] = None, overrides: Iterable[str] = ()) -> AnalyzeConfig:
    cfg = load_config(AnalyzeConfig, recipe, overrides)
    unknown = sorted(set(cfg.analysis.measures) - set(MEASURES))
    if unknown:
        raise ValueError(f"analysis.measures: unknown {unknown}; choose from {list(MEASURES)}")
    return cfg


def data_overrides(shorthand: Optional[str]) -> List[str]:
    """`--data` shorthand -> data.* overrides: `embedded` or `embedded:N` (N images per split), or a
    folder: IDX files (MNIST / Fashion-MNIST) -> data.name=idx, else an image folder (train/ and val/)."""
    if not shorthand:
        return []
    if shorthand == "embedded" or shorthand.startswith("embedded:"):
        out = ["data.name=embedded"]
        if ":" in shorthand:
            n = shorthand.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"--data {shorthand}: expected embedded:N with N a positive number of images")
            out.append(f"data.num_samples={n}")
        return out
    path = Path(shorthand).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--data {shorthand}: not 'embedded', 'embedded:N' or an existing folder")
    is_idx = any("ubyte" in p.name for p in path.iterdir())
    return [f"data.name={'idx' if is_idx else 'imagefolder'}", f"data.path={path}"]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "ckpt"


def _eval_loader(data: DataConfig, split: str, img_size: int, crop_ratio: float, batch_size: int) -> DataLoader:
    from ..data import build_dataset, build_eval_transform
    from ..data.loader import TransformedDataset, collate_skip_broken

    dataset = TransformedDataset(build_dataset(data, split), build_eval_transform(img_size, data.mean, data.std,
                                                                                  crop_ratio))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_skip_broken)


def _describe(ckpt: str, encoder) -> Dict[str, object]:
    from ..checkpoint import read_checkpoint

    e = encoder.cfg
    info = {"path": str(ckpt), "depth": encoder.depth, "embed_dim": e.embed_dim, "num_heads": e.num_heads,
            "patch_size": e.patch_size, "img_size": e.img_size, "supervised_blocks": None, "epoch": None}
    try:
        checkpoint = read_checkpoint(ckpt)
        info["epoch"] = checkpoint.epoch
        cfg = checkpoint.model_config()
        if cfg is not None:
            info["supervised_blocks"] = sorted(h.block for h in cfg.heads)
    except Exception as err:  # noqa: BLE001 - descriptive only
        logger.debug("no run config in %s: %s", ckpt, err)
    return info


def _reconstruct(ckpt: str, cfg: AnalyzeConfig, out_png: Path) -> Dict[str, float]:
    """Reconstructions of the first val images under a fixed mask; per-row masked-pixel MSE in [0, 1] space."""
    from ..analysis.plots import plot_reconstructions, reconstruction_grid
    from ..models.loading import load_checkpoint
    from ..models.masking import random_masking
    from ..targets import unpatchify
    from ..data import preview_images

    model = load_checkpoint(ckpt).float().eval()
    enc = model.cfg.encoder
    data = dataclasses.replace(cfg.data, img_size=enc.img_size)
    images = preview_images(data, cfg.analysis.reconstruction_images)
    n, num_patches = images.shape[0], model.encoder.num_patches
    noise = torch.rand(n, num_patches, generator=torch.Generator().manual_seed(cfg.analysis.mask_seed))
    rows = reconstruction_grid(model, images, noise, data.mean, data.std)
    plot_reconstructions(rows, out_png)
    mask = random_masking(n, num_patches, model.cfg.mask_ratio, torch.device("cpu"), noise).mask
    pixel_mask = unpatchify(mask.unsqueeze(-1).expand(-1, -1, enc.patch_size ** 2 * images.shape[1]),
                            enc.patch_size, images.shape[1])
    return {name: float(((x - rows["original"]) ** 2 * pixel_mask).sum() / pixel_mask.sum().clamp_min(1))
            for name, x in rows.items() if row_block(name) is not None}


def _loss_summary(metrics: Path) -> Dict[str, Dict[str, float]]:
    from ..training.logging import read_metrics

    rows = [r for r in read_metrics(metrics) if r.get("type") == "train"]
    if not rows:
        return {}
    keys = [k for k in rows[0] if k == "loss" or loss_block(k) is not None]
    tail = rows[-max(1, len(rows) // 10):]
    return {k: {"first": float(rows[0][k]), "last": float(rows[-1][k]),
                "last_10pct_mean": sum(float(r[k]) for r in tail) / len(tail), "steps": int(rows[-1]["step"])}
            for k in keys}


def run_analyze(checkpoints: List[str], cfg: AnalyzeConfig, out_dir: Optional[str] = None) -> Dict:
    """Every measure in cfg.analysis.measures for every checkpoint; returns the analysis dict (also in
    analysis.json) with "figures" naming the PNGs that report.html embeds."""
    from tqdm import tqdm

    from ..analysis import plots
    from ..analysis.attention import attention_distances, uniform_attention_distance
    from ..analysis.cka import cka_matrix
    from ..analysis.report import write_report
    from ..training.distributed import resolve_device

    if not checkpoints:
        raise ValueError("analyze needs at least one checkpoint")
    for c in checkpoints:
        if not Path(c).is_file():
            raise FileNotFoundError(f"checkpoint '{c}' does not exist")
    measures = [m for m in MEASURES if m in cfg.analysis.measures]
    out = Path(out_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = short_names(checkpoints)
    slugs = {c: _slug(names[c]) for c in checkpoints}
    progress = cfg.features.progress
    device = resolve_device(cfg.features.device)
    encoders = {c: frozen_encoder(c, cfg.features.preset) for c in checkpoints}
    blocks = {c: resolve_blocks(cfg.features.blocks, encoders[c].depth) for c in checkpoints}
    result: Dict = {"checkpoints": {names[c]: _describe(c, encoders[c]) for c in checkpoints},
                    "measures": measures, "config": to_dict(cfg), "notes": [], "figures": [], "timings": {}}
    figures: List[Dict[str, str]] = result["figures"]

    def figure(section: str, file: str, caption: str) -> None:
        figures.append({"section": section, "file": file, "caption": caption})

    def timed(key: str, t0: float) -> None:
        result["timings"][key] = round(time.perf_counter() - t0, 2)

    linear: Dict[str, Dict[int, float]] = {}
    knn: Dict[str, Dict[int, float]] = {}
    if "probe" in measures:
        t0 = time.perf_counter()
        probed = run_probe_layers(checkpoints, cfg, str(out / "probe"))
        result["probe"] = {names[c]: {str(b): r for b, r in probed["results"][c].items()} for c in checkpoints}
        linear = {names[c]: {b: r["top1"] for b, r in probed["results"][c].items()} for c in checkpoints}
        timed("probe", t0)
    if "knn" in measures:
        t0 = time.perf_counter()
        result["knn"] = {}
        for c in checkpoints:
            k_cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, blocks=blocks[c]))
            r = run_knn(c, k_cfg)
            result["knn"][names[c]] = {str(b): v for b, v in r.items()}
            knn[names[c]] = {b: v["top1"] for b, v in r.items()}
        timed("knn", t0)
    if linear or knn:
        plots.plot_layer_accuracy(linear, knn, out / "layers.png")
        figure("probe", "layers.png", "top-1 per block: linear probe (solid) and k-NN (dashed)")

    if "attention" in measures:
        t0 = time.perf_counter()
        result["attention"] = {}
        dists = {}
        for c in checkpoints:
            enc = encoders[c]
            loader = _eval_loader(cfg.data, cfg.features.val_split, enc.cfg.img_size, cfg.features.crop_ratio,
                                  cfg.features.batch_size)
            d = attention_distances(enc, loader, device, cfg.analysis.attention_images, progress,
                                    desc=f"attention {names[c]}")
            dists[names[c]] = d
            result["attention"][names[c]] = {
                "per_head": d.tolist(),
                "mean": d.mean(dim=1).tolist(),
                "std": d.std(dim=1, unbiased=False).tolist(),
                "min": d.min(dim=1).values.tolist(),
                "max": d.max(dim=1).values.tolist(),
                "images": min(cfg.analysis.attention_images, len(loader.dataset)),
                "max_possible_px": float(enc.cfg.patch_size * (enc.grid_size - 1) * 2 ** 0.5),
                "uniform_px": uniform_attention_distance(enc.grid_size, enc.cfg.patch_size),
            }
        refs = {f"uniform attention ({a['uniform_px']:.1f} px)": a["uniform_px"]
                for a in result["attention"].values()}
        plots.plot_attention_distance(dists, out / "attention_distance.png", refs)
        figure("attention", "attention_distance.png", "mean attention distance of every head, blocks on x")
        timed("attention", t0)

    if "cka" in measures:
        t0 = time.perf_counter()
        feats = {}
        for c in checkpoints:
            f = extract_features(c, cfg.data, cfg.features.val_split, cfg.features, blocks[c], encoders[c])
            feats[c] = {b: v[: cfg.analysis.cka_samples] for b, v in f.blocks.items()}
        result["cka"] = {"within": {}, "between": {}, "samples": min(v.shape[0] for f in feats.values()
                                                                       for v in f.values())}
        for c in tqdm(checkpoints, desc="CKA", disable=not progress, leave=False):
            m = cka_matrix(feats[c], feats[c])
            result["cka"]["within"][names[c]] = {"blocks": blocks[c], "matrix": m}
            file = f"cka-{slugs[c]}.png"
            plots.plot_cka(m, blocks[c], blocks[c], f"linear CKA between blocks\n{names[c]}", out / file)
            figure("cka", file, f"{names[c]}: CKA between every pair of blocks")
        for i, a in enumerate(checkpoints):
            for b in checkpoints[i + 1:]:
                m = cka_matrix(feats[a], feats[b])
                entry = {"a": names[a], "b": names[b], "blocks_a": blocks[a], "blocks_b": blocks[b], "matrix": m}
                if encoders[a].depth == encoders[b].depth and blocks[a] == blocks[b]:
                    entry["same_block"] = {str(blk): m[k][k] for k, blk in enumerate(blocks[a])}
                else:
                    result["notes"].append(f"CKA of the same block is not reported for {names[a]} vs {names[b]}: "
                                           f"depths {encoders[a].depth} and {encoders[b].depth} (or the analysed "
                                           f"blocks) differ; the full cross-block matrix is")
                result["cka"]["between"][f"{names[a]} vs {names[b]}"] = entry
                file = f"cka-{slugs[a]}-vs-{slugs[b]}.png"
                plots.plot_cka(m, blocks[a], blocks[b], f"linear CKA\n{names[a]} (rows) vs\n{names[b]} (columns)",
                               out / file, row_label=f"block of {names[a]}", col_label=f"block of {names[b]}")
                figure("cka", file, f"CKA between the blocks of {names[a]} and those of {names[b]}")
        timed("cka", t0)

    if "reconstruction" in measures:
        t0 = time.perf_counter()
        result["reconstruction"] = {}
        for c in tqdm(checkpoints, desc="reconstructions", disable=not progress, leave=False):
            file = f"reconstruction-{slugs[c]}.png"
            try:
                mse = _reconstruct(c, cfg, out / file)
            except Exception as err:  # noqa: BLE001 - e.g. no decoders in the file, a teacher target's file
                result["notes"].append(f"no reconstructions for {names[c]}: {err}")
                continue
            result["reconstruction"][names[c]] = {"masked_pixel_mse": mse}
            figure("reconstruction", file, f"{names[c]}: original, masked input, each supervised head")
        timed("reconstruction", t0)

    if "loss" in measures:
        result["loss"] = {}
        metrics = {}
        for c in checkpoints:
            path = Path(c).parent / "metrics.jsonl"
            if not path.is_file():
                result["notes"].append(f"no loss curves for {names[c]}: no metrics.jsonl next to the checkpoint")
                continue
            try:
                file = f"loss-{slugs[c]}.png"
                plots.plot_loss_curves(path, out / file)
            except ValueError as err:
                result["notes"].append(f"no loss curves for {names[c]}: {err}")
                continue
            metrics[names[c]] = path
            result["loss"][names[c]] = _loss_summary(path)
            figure("loss", file, f"{names[c]}: loss of every supervised head and the total")
        if len(metrics) > 1:
            plots.plot_last_head_losses(metrics, out / "loss-last-head.png")
            figure("loss", "loss-last-head.png", "the loss of each run's head on its last block, side by side")

    if "convergence" in measures:
        t0 = time.perf_counter()
        result["convergence"] = {}
        runs: Dict[Path, str] = {}
        for c in checkpoints:
            runs.setdefault(Path(c).resolve().parent, c)
        for run_dir, c in runs.items():
            epochs = epoch_checkpoints(run_dir)
            if not epochs:
                result["notes"].append(f"no convergence curve for {names[c]}: no checkpoint-epochNNNN.pt in "
                                       f"{run_dir} (pre-train with train.save_every_epochs=N to keep them)")
                continue
            per_epoch: Dict[str, Dict] = {"linear": {}, "knn": {}}
            for epoch, path in tqdm(epochs.items(), desc=f"probes along {names[c]}", disable=not progress,
                                    leave=False):  # probe-layers' own outputs per epoch under convergence/
                probed = run_probe_layers([str(path)], cfg, str(out / "convergence" / slugs[c] / f"epoch{epoch}"))
                per_epoch["linear"][epoch] = {b: r["top1"] for b, r in probed["results"][str(path)].items()}
            if cfg.analysis.convergence_knn:
                for epoch, path in tqdm(epochs.items(), desc=f"k-NN along {names[c]}", disable=not progress,
                                        leave=False):
                    depth = max(per_epoch["linear"][epoch])
                    k_cfg = dataclasses.replace(cfg, features=dataclasses.replace(
                        cfg.features, blocks=resolve_blocks(cfg.features.blocks, depth), progress=False))
                    per_epoch["knn"][epoch] = {b: v["top1"] for b, v in run_knn(str(path), k_cfg).items()}
            result["convergence"][names[c]] = {
                kind: {str(e): {str(b): v for b, v in r.items()} for e, r in series.items()}
                for kind, series in per_epoch.items() if series}
            result["convergence"][names[c]]["checkpoints"] = {str(e): str(p) for e, p in epochs.items()}
            for kind, label in (("linear", "linear-probe top-1 (%)"), ("knn", "k-NN top-1 (%)")):
                if not per_epoch[kind]:
                    continue
                by_block: Dict[int, Dict[int, float]] = {}
                for e, r in per_epoch[kind].items():
                    for b, v in r.items():
                        by_block.setdefault(b, {})[e] = v
                file = f"convergence-{kind}-{slugs[c]}.png"
                plots.plot_convergence(by_block, f"{names[c]}: {label} per block along pre-training", out / file,
                                       ylabel=label)
                figure("convergence", file, f"{names[c]}: {label} of every block after each saved epoch")
        timed("convergence", t0)

    (out / "analysis.json").write_text(json.dumps(result, indent=2))
    write_csv(result, out / "metrics.csv")
    write_report(result, out, out / "report.html")
    result["out_dir"] = out
    return result


def metric_rows(result: Dict) -> List[List[object]]:
    """Every number of an analysis as (checkpoint, measure, block, detail, value) rows."""
    rows: List[List[object]] = []
    for kind in ("probe", "knn"):
        for name, per_block in result.get(kind, {}).items():
            for b, r in per_block.items():
                for key, v in r.items():
                    rows.append([name, f"{'linear' if kind == 'probe' else 'knn'}_{key}", b, "", v])
    for name, a in result.get("attention", {}).items():
        for i, heads in enumerate(a["per_head"]):
            for h, v in enumerate(heads):
                rows.append([name, "attention_distance_px", i + 1, f"head {h}", v])
            for stat in ("mean", "std", "min", "max"):
                rows.append([name, f"attention_distance_{stat}_px", i + 1, "over heads", a[stat][i]])
        rows.append([name, "attention_distance_uniform_px", "", "reference", a["uniform_px"]])
    cka = result.get("cka", {})
    for name, w in cka.get("within", {}).items():
        for i, bi in enumerate(w["blocks"]):
            for j, bj in enumerate(w["blocks"]):
                rows.append([name, "cka", bi, f"block {bj}", w["matrix"][i][j]])
    for pair, e in cka.get("between", {}).items():
        for i, bi in enumerate(e["blocks_a"]):
            for j, bj in enumerate(e["blocks_b"]):
                rows.append([pair, "cka_between", bi, f"{e['b']} block {bj}", e["matrix"][i][j]])
    for name, r in result.get("reconstruction", {}).items():
        for head, v in r["masked_pixel_mse"].items():
            rows.append([name, "reconstruction_masked_mse", str(row_block(head)), "head", v])
    for name, losses in result.get("loss", {}).items():
        for key, s in losses.items():
            for stat, v in s.items():
                rows.append([name, f"train_{key}", "", stat, v])
    for name, conv in result.get("convergence", {}).items():
        for kind in ("linear", "knn"):
            for e, per_block in conv.get(kind, {}).items():
                for b, v in per_block.items():
                    rows.append([name, f"convergence_{kind}_top1", b, f"epoch {e}", v])
    return rows


def write_csv(result: Dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["checkpoint", "measure", "block", "detail", "value"])
        w.writerows(metric_rows(result))
