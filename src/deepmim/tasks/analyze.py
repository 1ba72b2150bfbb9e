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
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch.utils.data import DataLoader

from ..analysis import plots
from ..analysis.attention import attention_distances, uniform_attention_distance
from ..analysis.cka import cka_matrix
from ..analysis.features import extract_features, fit_normalisation, frozen_encoder, resolve_blocks
from ..analysis.report import short_names, write_report
from ..checkpoint import epoch_checkpoints, read_checkpoint
from ..config.loader import load_config, to_dict
from ..config.schema import AnalyzeConfig, DataConfig
from ..data import TransformedDataset, build_dataset, build_eval_transform, collate_skip_broken, preview_images
from ..models.head_names import loss_block, row_block
from ..models.loading import load_checkpoint
from ..models.masking import random_masking
from ..targets import unpatchify
from ..training.distributed import resolve_device
from ..training.jsonfile import write_json
from ..training.metrics_log import METRICS_FILE, read_metrics
from ..training.progress import task_bar
from .probe import run_knn, run_probe_layers
from .scored_data import data_record

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
    dataset = TransformedDataset(
        build_dataset(data, split), build_eval_transform(img_size, data.mean, data.std, crop_ratio)
    )
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_skip_broken)


def _describe(ckpt: str, encoder) -> Dict[str, object]:
    e = encoder.cfg
    info = {
        "path": str(ckpt),
        "depth": encoder.depth,
        "embed_dim": e.embed_dim,
        "num_heads": e.num_heads,
        "patch_size": e.patch_size,
        "img_size": e.img_size,
        "supervised_blocks": None,
        "epoch": None,
    }
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
    model = load_checkpoint(ckpt).float().eval()
    enc = model.cfg.encoder
    data = dataclasses.replace(fit_normalisation(cfg.data, enc.in_chans, ckpt), img_size=enc.img_size)
    images = preview_images(data, cfg.analysis.reconstruction_images)
    n, num_patches = images.shape[0], model.encoder.num_patches
    noise = torch.rand(n, num_patches, generator=torch.Generator().manual_seed(cfg.analysis.mask_seed))
    rows = plots.reconstruction_grid(model, images, noise, data.mean, data.std)
    plots.plot_reconstructions(rows, out_png)
    mask = random_masking(n, num_patches, model.cfg.mask_ratio, torch.device("cpu"), noise).mask
    pixel_mask = unpatchify(
        mask.unsqueeze(-1).expand(-1, -1, enc.patch_size**2 * images.shape[1]), enc.patch_size, images.shape[1]
    )
    return {
        name: float(((x - rows["original"]) ** 2 * pixel_mask).sum() / pixel_mask.sum().clamp_min(1))
        for name, x in rows.items()
        if row_block(name) is not None
    }


def _loss_summary(metrics: Path) -> Dict[str, Dict[str, float]]:
    rows = [r for r in read_metrics(metrics) if r.get("type") == "train"]
    if not rows:
        return {}
    keys = [k for k in rows[0] if k == "loss" or loss_block(k) is not None]
    tail = rows[-max(1, len(rows) // 10) :]
    return {
        k: {
            "first": float(rows[0][k]),
            "last": float(rows[-1][k]),
            "last_10pct_mean": sum(float(r[k]) for r in tail) / len(tail),
            "steps": int(rows[-1]["step"]),
        }
        for k in keys
    }


@dataclass
class Analysis:
    """What the measures share: the checkpoints, their frozen encoders and analysed blocks, the output
    folder, and the result every measure adds its part to (analysis.json, with figures and notes)."""

    checkpoints: List[str]
    cfg: AnalyzeConfig
    out: Path
    device: torch.device
    names: Dict[str, str]
    slugs: Dict[str, str]
    encoders: Dict[str, torch.nn.Module]
    blocks: Dict[str, List[int]]
    result: Dict
    linear: Dict[str, Dict[int, float]] = field(default_factory=dict)  # top-1 per block, for layers.png
    knn: Dict[str, Dict[int, float]] = field(default_factory=dict)

    @property
    def progress(self) -> bool:
        return self.cfg.features.progress

    def figure(self, section: str, file: str, caption: str) -> None:
        self.result["figures"].append({"section": section, "file": file, "caption": caption})

    def note(self, text: str) -> None:
        self.result["notes"].append(text)


def measure_probe(a: Analysis) -> None:
    """A linear probe per block (probe-layers' own outputs under probe/)."""
    probed = run_probe_layers(a.checkpoints, a.cfg, str(a.out / "probe"), data_source=a.result["data"]["source"])
    a.result["data"]["images"] = probed["data"]["images"]
    a.result["probe"] = {a.names[c]: {str(b): r for b, r in probed["results"][c].items()} for c in a.checkpoints}
    a.linear = {a.names[c]: {b: r["top1"] for b, r in probed["results"][c].items()} for c in a.checkpoints}


def measure_knn(a: Analysis) -> None:
    """Weighted k-NN per block."""
    a.result["knn"] = {}
    for c in a.checkpoints:
        k_cfg = dataclasses.replace(a.cfg, features=dataclasses.replace(a.cfg.features, blocks=a.blocks[c]))
        scored: Dict = {}
        r = run_knn(c, k_cfg, scored=scored)
        a.result["data"]["images"] = scored["images"]
        a.result["knn"][a.names[c]] = {str(b): v for b, v in r.items()}
        a.knn[a.names[c]] = {b: v["top1"] for b, v in r.items()}


def plot_layer_accuracy(a: Analysis) -> None:
    """layers.png: probe and k-NN top-1 per block, once both (or the one asked for) are measured."""
    if a.linear or a.knn:
        plots.plot_layer_accuracy(a.linear, a.knn, a.out / "layers.png")
        a.figure("probe", "layers.png", "top-1 per block: linear probe (solid) and k-NN (dashed)")


def measure_attention(a: Analysis) -> None:
    """Mean attention distance of every head of every block."""
    cfg = a.cfg
    a.result["attention"] = {}
    dists = {}
    for c in a.checkpoints:
        enc = a.encoders[c]
        loader = _eval_loader(
            fit_normalisation(cfg.data, enc.cfg.in_chans, c),
            cfg.features.val_split,
            enc.cfg.img_size,
            cfg.features.crop_ratio,
            cfg.features.batch_size,
        )
        d = attention_distances(
            enc, loader, a.device, cfg.analysis.attention_images, a.progress, desc=f"attention {a.names[c]}"
        )
        dists[a.names[c]] = d
        a.result["attention"][a.names[c]] = {
            "per_head": d.tolist(),
            "mean": d.mean(dim=1).tolist(),
            "std": d.std(dim=1, unbiased=False).tolist(),
            "min": d.min(dim=1).values.tolist(),
            "max": d.max(dim=1).values.tolist(),
            "images": min(cfg.analysis.attention_images, len(loader.dataset)),
            "max_possible_px": float(enc.cfg.patch_size * (enc.grid_size - 1) * 2**0.5),
            "uniform_px": uniform_attention_distance(enc.grid_size, enc.cfg.patch_size),
        }
    refs = {f"uniform attention ({r['uniform_px']:.1f} px)": r["uniform_px"] for r in a.result["attention"].values()}
    plots.plot_attention_distance(dists, a.out / "attention_distance.png", refs)
    a.figure("attention", "attention_distance.png", "mean attention distance of every head, blocks on x")


def measure_cka(a: Analysis) -> None:
    """Linear CKA between the blocks of each checkpoint, and between those of every pair of checkpoints."""
    names, blocks, encoders = a.names, a.blocks, a.encoders
    feats = {}
    for c in a.checkpoints:
        f = extract_features(c, a.cfg.data, a.cfg.features.val_split, a.cfg.features, blocks[c], encoders[c])
        feats[c] = {b: v[: a.cfg.analysis.cka_samples] for b, v in f.blocks.items()}
    cka = a.result["cka"] = {
        "within": {},
        "between": {},
        "samples": min(v.shape[0] for f in feats.values() for v in f.values()),
    }
    for c in task_bar(a.checkpoints, desc="CKA", enabled=a.progress):
        m = cka_matrix(feats[c], feats[c])
        cka["within"][names[c]] = {"blocks": blocks[c], "matrix": m}
        file = f"cka-{a.slugs[c]}.png"
        plots.plot_cka(m, blocks[c], blocks[c], f"linear CKA between blocks\n{names[c]}", a.out / file)
        a.figure("cka", file, f"{names[c]}: CKA between every pair of blocks")
    for i, x in enumerate(a.checkpoints):
        for y in a.checkpoints[i + 1 :]:
            m = cka_matrix(feats[x], feats[y])
            entry = {"a": names[x], "b": names[y], "blocks_a": blocks[x], "blocks_b": blocks[y], "matrix": m}
            if encoders[x].depth == encoders[y].depth and blocks[x] == blocks[y]:
                entry["same_block"] = {str(blk): m[k][k] for k, blk in enumerate(blocks[x])}
            else:
                a.note(
                    f"CKA of the same block is not reported for {names[x]} vs {names[y]}: depths "
                    f"{encoders[x].depth} and {encoders[y].depth} (or the analysed blocks) differ; the full "
                    f"cross-block matrix is"
                )
            cka["between"][f"{names[x]} vs {names[y]}"] = entry
            file = f"cka-{a.slugs[x]}-vs-{a.slugs[y]}.png"
            plots.plot_cka(
                m,
                blocks[x],
                blocks[y],
                f"linear CKA\n{names[x]} (rows) vs\n{names[y]} (columns)",
                a.out / file,
                row_label=f"block of {names[x]}",
                col_label=f"block of {names[y]}",
            )
            a.figure("cka", file, f"CKA between the blocks of {names[x]} and those of {names[y]}")


def measure_reconstruction(a: Analysis) -> None:
    """Every head's reconstruction of the first val images under one fixed mask."""
    a.result["reconstruction"] = {}
    for c in task_bar(a.checkpoints, desc="reconstructions", enabled=a.progress):
        file = f"reconstruction-{a.slugs[c]}.png"
        try:
            mse = _reconstruct(c, a.cfg, a.out / file)
        except Exception as err:  # noqa: BLE001 - e.g. no decoders in the file, a teacher target's file
            a.note(f"no reconstructions for {a.names[c]}: {err}")
            continue
        a.result["reconstruction"][a.names[c]] = {"masked_pixel_mse": mse}
        a.figure("reconstruction", file, f"{a.names[c]}: original, masked input, each supervised head")


def measure_loss(a: Analysis) -> None:
    """The loss curves of every head, from the metrics.jsonl next to each checkpoint."""
    a.result["loss"] = {}
    metrics = {}
    for c in a.checkpoints:
        name = a.names[c]
        path = Path(c).parent / METRICS_FILE
        if not path.is_file():
            a.note(f"no loss curves for {name}: no metrics.jsonl next to the checkpoint")
            continue
        try:
            file = f"loss-{a.slugs[c]}.png"
            plots.plot_loss_curves(path, a.out / file)
        except ValueError as err:
            a.note(f"no loss curves for {name}: {err}")
            continue
        metrics[name] = path
        a.result["loss"][name] = _loss_summary(path)
        a.figure("loss", file, f"{name}: loss of every supervised head and the total")
    if len(metrics) > 1:
        plots.plot_last_head_losses(metrics, a.out / "loss-last-head.png")
        a.figure("loss", "loss-last-head.png", "the loss of each run's head on its last block, side by side")


def measure_convergence(a: Analysis) -> None:
    """Probe (and k-NN) per block on every checkpoint-epochNNNN.pt of each checkpoint's run."""
    a.result["convergence"] = {}
    runs: Dict[Path, str] = {}
    for c in a.checkpoints:
        runs.setdefault(Path(c).resolve().parent, c)
    for run_dir, c in runs.items():
        epochs = epoch_checkpoints(run_dir)
        if not epochs:
            a.note(
                f"no convergence curve for {a.names[c]}: no checkpoint-epochNNNN.pt in {run_dir} (pre-train "
                f"with train.save_every_epochs=N to keep them)"
            )
            continue
        per_epoch = _probes_along(a, c, epochs)
        conv = a.result["convergence"][a.names[c]] = {
            kind: {str(e): {str(b): v for b, v in r.items()} for e, r in series.items()}
            for kind, series in per_epoch.items()
            if series
        }
        conv["checkpoints"] = {str(e): str(p) for e, p in epochs.items()}
        for kind, label in (("linear", "linear-probe top-1 (%)"), ("knn", "k-NN top-1 (%)")):
            if not per_epoch[kind]:
                continue
            by_block: Dict[int, Dict[int, float]] = {}
            for e, r in per_epoch[kind].items():
                for b, v in r.items():
                    by_block.setdefault(b, {})[e] = v
            file = f"convergence-{kind}-{a.slugs[c]}.png"
            plots.plot_convergence(
                by_block, f"{a.names[c]}: {label} per block along pre-training", a.out / file, ylabel=label
            )
            a.figure("convergence", file, f"{a.names[c]}: {label} of every block after each saved epoch")


def _probes_along(a: Analysis, c: str, epochs: Dict[int, Path]) -> Dict[str, Dict[int, Dict[int, float]]]:
    """{linear | knn: {epoch: {block: top-1}}} over a run's numbered checkpoints."""
    per_epoch: Dict[str, Dict] = {"linear": {}, "knn": {}}
    # probe-layers' own outputs per epoch under convergence/
    for epoch, path in task_bar(list(epochs.items()), desc=f"probes along {a.names[c]}", enabled=a.progress):
        probed = run_probe_layers([str(path)], a.cfg, str(a.out / "convergence" / a.slugs[c] / f"epoch{epoch}"))
        per_epoch["linear"][epoch] = {b: r["top1"] for b, r in probed["results"][str(path)].items()}
    if a.cfg.analysis.convergence_knn:
        for epoch, path in task_bar(list(epochs.items()), desc=f"k-NN along {a.names[c]}", enabled=a.progress):
            depth = max(per_epoch["linear"][epoch])
            k_cfg = dataclasses.replace(
                a.cfg,
                features=dataclasses.replace(
                    a.cfg.features, blocks=resolve_blocks(a.cfg.features.blocks, depth), progress=False
                ),
            )
            per_epoch["knn"][epoch] = {b: v["top1"] for b, v in run_knn(str(path), k_cfg).items()}
    return per_epoch


MEASURE_STEPS: Dict[str, Callable[[Analysis], None]] = {
    "probe": measure_probe,
    "knn": measure_knn,
    "attention": measure_attention,
    "cka": measure_cka,
    "reconstruction": measure_reconstruction,
    "loss": measure_loss,
    "convergence": measure_convergence,
}
UNTIMED = ("loss",)  # reads a log: no time worth reporting


def run_analyze(
    checkpoints: List[str], cfg: AnalyzeConfig, out_dir: Optional[str] = None, data_source: str = "given"
) -> Dict:
    """Every measure in cfg.analysis.measures for every checkpoint; returns the analysis dict (also in
    analysis.json) with "figures" naming the PNGs that report.html embeds, and "data" the dataset,
    `data_source` and the images per split the probes read."""
    if not checkpoints:
        raise ValueError("analyze needs at least one checkpoint")
    for c in checkpoints:
        if not Path(c).is_file():
            raise FileNotFoundError(f"checkpoint '{c}' does not exist")
    measures = [m for m in MEASURES if m in cfg.analysis.measures]
    out = Path(out_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = short_names(checkpoints)
    encoders = {c: frozen_encoder(c, cfg.features.preset) for c in checkpoints}
    a = Analysis(
        checkpoints,
        cfg,
        out,
        resolve_device(cfg.features.device),
        names,
        {c: _slug(names[c]) for c in checkpoints},
        encoders,
        {c: resolve_blocks(cfg.features.blocks, encoders[c].depth) for c in checkpoints},
        {
            "checkpoints": {names[c]: _describe(c, encoders[c]) for c in checkpoints},
            "measures": measures,
            "data": data_record(cfg.data, data_source, {}),
            "config": to_dict(cfg),
            "notes": [],
            "figures": [],
            "timings": {},
        },
    )
    last_layer_measure = [m for m in measures if m in ("probe", "knn")][-1:]
    for measure in measures:
        t0 = time.perf_counter()
        MEASURE_STEPS[measure](a)
        if measure not in UNTIMED:
            a.result["timings"][measure] = round(time.perf_counter() - t0, 2)
        if [measure] == last_layer_measure:
            plot_layer_accuracy(a)
    result = a.result
    write_json(out / "analysis.json", result)
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
