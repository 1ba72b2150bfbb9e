"""The measures every arm and seed gets, one stage each, on frozen features of the train -> val splits.

probe: MAE's linear probe (analysis.probes, the code `deepmim probe-layers` runs) and DINO's weighted
k-NN on every block, for each pooling; attention: the mean attention distance of every head (analysis.
attention); convergence: the same probes on the initial weights and every periodic checkpoint of the
pre-training run; finetune: an ordinary `deepmim finetune` run from the arm's weights. Accuracies are
stored in percent. Features are extracted in memory (no feature cache: a study holds many checkpoints).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Tuple

from ...analysis.features import check_classes, extract_features, frozen_encoder, resolve_blocks
from ...analysis.probes import knn_classify, train_linear_probe
from ...config.loader import to_dict
from ...config.schema import FeatureConfig, ModelConfig
from ..probe import write_initial_checkpoint
from .arms.base import mapping_overrides, yaml_value
from .flops import classifier_flops_per_image, encoder_flops_per_image, sample_images
from .stages import Stage, strip_cosmetic


def _percent(metrics: Dict[str, float]) -> Dict[str, float]:
    return {k: 100.0 * v if k.startswith("top") else v for k, v in metrics.items()}


def _feature_config(study, pool: str) -> FeatureConfig:
    ev = study.evaluate
    return FeatureConfig(
        blocks=ev.blocks,
        pool=pool,
        batch_size=ev.batch_size,
        cache_dir=None,
        device=ev.device,
        crop_ratio=ev.crop_ratio,
        progress=False,
        train_split=study.data.split,
        val_split=ev.val_split,
    )


def _eval_inputs(study, upstream: str, seed: int, pools: List[str]) -> Dict:
    ev = study.evaluate
    return {
        "upstream": upstream,
        "data": strip_cosmetic(to_dict(study.data)),
        "val_split": ev.val_split,
        "pools": list(pools),
        "blocks": ev.blocks,
        "probe": to_dict(ev.probe),
        "knn": to_dict(ev.knn) if ev.knn_enabled else None,
        "seed": seed,
        "crop_ratio": ev.crop_ratio,
    }


def probe_blocks(checkpoint: str, study, seed: int, pools: List[str]) -> Tuple[Dict, Dict, int, int, float]:
    """({pool: {block: linear metrics}}, {pool: {block: k-NN metrics}}, train images, val images, encoder
    FLOPs per image) of one checkpoint; the probe is seeded with the study seed."""
    ev = study.evaluate
    encoder = frozen_encoder(checkpoint)
    blocks = resolve_blocks(ev.blocks, encoder.depth)
    probe = dataclasses.replace(ev.probe, seed=seed)
    linear: Dict[str, Dict] = {}
    knn: Dict[str, Dict] = {}
    n_train = n_val = 0
    for pool in pools:
        feat = _feature_config(study, pool)
        train = extract_features(checkpoint, study.data, study.data.split, feat, blocks, encoder)
        val = extract_features(checkpoint, study.data, ev.val_split, feat, blocks, encoder)
        classes = check_classes(train, val, None)
        n_train, n_val = len(train.labels), len(val.labels)
        linear[pool] = {
            str(b): _percent(
                train_linear_probe(train.blocks[b], train.labels, val.blocks[b], val.labels, classes, probe)
            )
            for b in blocks
        }
        if ev.knn_enabled:
            knn[pool] = {
                str(b): _percent(
                    knn_classify(train.blocks[b], train.labels, val.blocks[b], val.labels, classes, ev.knn)
                )
                for b in blocks
            }
    per_image = encoder_flops_per_image(encoder, sample_images(study.data, ev.val_split, encoder.cfg.img_size))
    return linear, knn, n_train, n_val, per_image


def probe_stage(study, checkpoint: Path, seed: int, upstream: str) -> Stage:
    pools = study.evaluate.pools

    def run():
        linear, knn, n_train, n_val, per_image = probe_blocks(str(checkpoint), study, seed, pools)
        images = (n_train + n_val) * len(pools)
        pool, block, top1 = max(
            ((p, b, r["top1"]) for p, rs in linear.items() for b, r in rs.items()), key=lambda t: t[2]
        )
        return {
            "linear": linear,
            "knn": knn,
            "train_images": n_train,
            "val_images": n_val,
            "flops_per_image": per_image,
            "flops": per_image * images,
            "summary": f"best linear probe {top1:.2f}% (block {block}, {pool})",
        }

    return Stage("probe", _eval_inputs(study, upstream, seed, pools), run)


def attention_stage(study, checkpoint: Path, upstream: str) -> Stage:
    ev = study.evaluate
    inputs = {
        "upstream": upstream,
        "data": strip_cosmetic(to_dict(study.data)),
        "val_split": ev.val_split,
        "images": ev.attention_images,
        "crop_ratio": ev.crop_ratio,
    }

    def run():
        from torch.utils.data import DataLoader

        from ...analysis.attention import attention_distances, uniform_attention_distance
        from ...data import TransformedDataset, build_dataset, build_eval_transform, collate_skip_broken
        from ...training import resolve_device

        encoder = frozen_encoder(str(checkpoint))
        img = encoder.cfg.img_size
        dataset = TransformedDataset(
            build_dataset(study.data, ev.val_split),
            build_eval_transform(img, study.data.mean, study.data.std, ev.crop_ratio),
        )
        loader = DataLoader(
            dataset, batch_size=ev.batch_size, shuffle=False, num_workers=0, collate_fn=collate_skip_broken
        )
        d = attention_distances(encoder, loader, resolve_device(ev.device), ev.attention_images)
        images = min(ev.attention_images, len(dataset))
        per_image = encoder_flops_per_image(encoder, sample_images(study.data, ev.val_split, img))
        mean, spread = d.mean(dim=1).tolist(), d.std(dim=1, unbiased=False).tolist()
        return {
            "per_head": d.tolist(),
            "mean": mean,
            "spread": spread,
            "images": images,
            "uniform_px": uniform_attention_distance(encoder.grid_size, encoder.cfg.patch_size),
            "flops": per_image * images,
            "summary": f"mean distance {mean[0]:.2f} px (block 1) -> {mean[-1]:.2f} px (block {len(mean)})",
        }

    return Stage("attention", inputs, run)


def convergence_stage(
    study, model: ModelConfig, seed: int, pretrain_folder: Path, folder: Path, upstream: str
) -> Stage:
    """Probes on the weights after 0 (the initialisation, = the random arm of this seed), every saved
    checkpoint-epochNNNN.pt of the run (train.save_every_epochs) and the final epoch."""
    pools = study.evaluate.convergence_pools

    def run():
        from ...checkpoint import epoch_checkpoints

        checkpoints = {
            0: write_initial_checkpoint(model, seed, folder / "initial.pt"),
            **epoch_checkpoints(pretrain_folder),
        }
        linear: Dict[str, Dict] = {p: {} for p in pools}
        knn: Dict[str, Dict] = {p: {} for p in pools}
        flops = 0.0
        for epochs, path in checkpoints.items():
            lin, kn, n_train, n_val, per_image = probe_blocks(str(path), study, seed, pools)
            flops += per_image * (n_train + n_val) * len(pools)
            for p in pools:
                linear[p][str(epochs)] = {b: r["top1"] for b, r in lin[p].items()}
                if p in kn:
                    knn[p][str(epochs)] = {b: r["top1"] for b, r in kn[p].items()}
        last = max(checkpoints)
        top = max(linear[pools[0]][str(last)].values())
        first = max(linear[pools[0]]["0"].values())
        return {
            "epochs": sorted(checkpoints),
            "linear": linear,
            "knn": knn if study.evaluate.knn_enabled else {},
            "flops": flops,
            "summary": f"best-block linear probe ({pools[0]}) {first:.2f}% at epoch 0 -> {top:.2f}% at {last}",
        }

    return Stage("convergence", _eval_inputs(study, upstream, seed, pools), run)


def finetune_overrides(study, checkpoint: Path, seed: int, folder: Path) -> List[str]:
    """The `deepmim finetune` command line: the study's overrides over the recipe, the study's data, the
    arm's weights (scratch = the random arm's untrained encoder), seed, folder, resume."""
    return (
        mapping_overrides(study.finetune.overrides)
        + mapping_overrides({"data": to_dict(study.data)})
        + [
            f"model.checkpoint={yaml_value(str(checkpoint))}",
            "model.preset=null",
            f"train.seed={seed}",
            f"train.output_dir={yaml_value(str(folder))}",
            "train.resume=auto",
            f"val_split={yaml_value(study.evaluate.val_split)}",
        ]
    )


def finetune_stage(study, checkpoint: Path, seed: int, folder: Path, upstream: str) -> Stage:
    from ..finetune import load_finetune_config

    overrides = finetune_overrides(study, checkpoint, seed, folder)
    cfg = load_finetune_config(study.finetune.recipe, overrides)
    command = f"deepmim finetune --config {study.finetune.recipe} " + " ".join(overrides)

    def run():
        from ...data import build_dataset
        from ...training.metrics_log import METRICS_FILE, read_metrics
        from ..finetune import run_finetune

        result = run_finetune(cfg)
        rows = [r for r in read_metrics(folder / METRICS_FILE) if r.get("type") == "eval"]
        num_classes = cfg.model.num_classes or len(build_dataset(cfg.data, cfg.data.split).classes)
        enc = frozen_encoder(str(checkpoint)).cfg
        train_pi, eval_pi = classifier_flops_per_image(
            enc,
            num_classes,
            cfg.data.img_size,
            cfg.model.global_pool,
            sample_images(cfg.data, cfg.data.split, cfg.data.img_size),
        )
        images = result.step * cfg.train.batch_size * cfg.train.accum_steps
        eval_images = sum(r["images"] for r in rows)
        last = rows[-1]
        return {
            "top1": last["top1"],
            "top5": last.get("top5"),
            "best_top1": last["best_top1"],
            "per_epoch_top1": [r["top1"] for r in rows],
            "epochs": len(rows),
            "steps": result.step,
            "images": images,
            "flops_per_image": train_pi,
            "eval_flops_per_image": eval_pi,
            "flops": train_pi * images,
            "eval_flops": eval_pi * eval_images,
            "checkpoint": str(result.checkpoint),
            "command": command,
            "summary": f"top-1 {last['top1']:.2f}% after {len(rows)} epochs",
        }

    hashed = strip_cosmetic(to_dict(cfg))
    hashed["model"]["checkpoint"] = os.path.relpath(checkpoint, study.output_dir)  # a moved study keeps its hashes
    inputs = {"upstream": upstream, "recipe": study.finetune.recipe, "finetune": hashed}
    return Stage("finetune", inputs, run, folder)
