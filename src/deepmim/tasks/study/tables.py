"""The study's tables, built from results.json only, rendered as Markdown (results.md) and HTML (report.html).

Cells are mean ± sample std over seeds (the std is left out for one seed). "Best block" is the block with
the highest mean over seeds, reported with its mean ± std; "last block" is the encoder's last block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .arms import training_stage


@dataclass
class Table:
    section: str  # headline | probe | convergence | attention | cost
    title: str
    header: List[str]
    rows: List[List[str]]
    notes: List[str] = field(default_factory=list)


def fmt(ms: Optional[Dict[str, Any]], digits: int = 2) -> str:
    if not ms or ms.get("mean") is None:
        return "-"
    if ms.get("std") is None:
        return f"{ms['mean']:.{digits}f}"
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def fmt_flops(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    for factor, unit in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= factor:
            return f"{value / factor:.3g} {unit}FLOP"
    return f"{value:.3g} FLOP"


def fmt_minutes(ms: Optional[Dict[str, Any]]) -> str:
    if not ms or ms.get("mean") is None:
        return "-"
    return fmt({"mean": ms["mean"] / 60, "std": None if ms.get("std") is None else ms["std"] / 60}, 1)


def best_block(per_block: Dict[str, Dict[str, Any]]) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """(block, mean_std) with the highest mean."""
    scored = [(b, ms) for b, ms in per_block.items() if ms.get("mean") is not None]
    if not scored:
        return None, None
    return max(scored, key=lambda t: (t[1]["mean"], -int(t[0])))


def last_block(per_block: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    return per_block[max(per_block, key=int)] if per_block else None


def _mean(ms: Optional[Dict[str, Any]]) -> Optional[float]:
    return ms.get("mean") if ms else None


def headline(results: Dict[str, Any]) -> Table:
    pools = results["pools"]
    arms = results["arms"]
    has_ft = any("finetune_top1" in a["aggregate"] for a in arms.values())
    has_knn = any(a["aggregate"]["knn"] for a in arms.values())
    header = ["arm", "kind", "seeds"] + (["fine-tune top-1"] if has_ft else [])
    for pool in pools:
        header += [f"probe {pool}: best block", f"probe {pool}: last block"]
    header += [f"k-NN {pool}: best block" for pool in pools] if has_knn else []
    header += ["wall-clock: train (min)", "FLOPs: pre-train + fine-tune"]
    rows = []
    for name, arm in arms.items():
        agg = arm["aggregate"]
        row = [name, arm["kind"], str(len(arm["seeds"]))] + ([fmt(agg.get("finetune_top1"))] if has_ft else [])
        for pool in pools:
            block, ms = best_block(agg["linear"].get(pool, {}))
            row += [f"{fmt(ms)} (b{block})" if block else "-", fmt(last_block(agg["linear"].get(pool, {})))]
        if has_knn:
            for pool in pools:
                block, ms = best_block(agg["knn"].get(pool, {}))
                row.append(f"{fmt(ms)} (b{block})" if block else "-")
        row += [fmt_minutes(agg["seconds"].get("training")), fmt_flops(_mean(agg["flops"].get("training")))]
        rows.append(row)
    notes = [
        f"top-1 (%) on the {results['config']['evaluate']['val_split']} split, mean ± sample std over seeds "
        f"{', '.join(map(str, results['seeds']))}; probe = linear probe on frozen features (cls token or "
        f"avg of the patch tokens), bN = block N.",
        "random: the untrained encoder (each seed's initial weights, epoch 0 of every pretrain arm); its "
        "fine-tune column is supervised training from scratch with the same recipe and epochs.",
        "wall-clock: pre-training (or writing the initial weights) + fine-tuning; FLOPs: their training steps "
        "(forward + backward), evaluation passes excluded (see the cost table).",
    ]
    return Table("headline", "Per arm", header, rows, notes)


def per_block(results: Dict[str, Any], kind: str) -> List[Table]:
    label = "Linear probe" if kind == "linear" else "k-NN"
    tables = []
    for pool in results["pools"]:
        arms = {n: a["aggregate"][kind].get(pool, {}) for n, a in results["arms"].items()}
        blocks = sorted({b for v in arms.values() for b in v}, key=int)
        if not blocks:
            continue
        rows = [[b] + [fmt(v.get(b)) for v in arms.values()] for b in blocks]
        tables.append(Table("probe", f"{label} top-1 (%) per block, {pool} pooling", ["block"] + list(arms), rows))
    return tables


def convergence(results: Dict[str, Any]) -> List[Table]:
    tables = []
    for kind, label in (("linear", "Linear probe"), ("knn", "k-NN")):
        for pool in results["config"]["evaluate"]["convergence_pools"]:
            rows, depth = [], 0
            for name, arm in results["arms"].items():
                agg = arm["aggregate"]
                series = agg.get("convergence", {}).get(kind, {}).get(pool, {})
                total = _mean(agg["flops"].get(training_stage(arm["kind"])))
                for epoch, blocks in series.items():
                    depth = max(depth, len(blocks))
                    flops = total * int(epoch) / agg["pretrain_epochs"] if total and agg["pretrain_epochs"] else 0
                    rows.append([name, epoch, fmt_flops(flops)] + [fmt(blocks[b]) for b in sorted(blocks, key=int)])
            if rows:
                tables.append(
                    Table(
                        "convergence",
                        f"{label} top-1 (%) along pre-training, {pool} pooling",
                        ["arm", "epochs", "pre-training FLOPs"] + [f"block {b}" for b in range(1, depth + 1)],
                        rows,
                        ["epoch 0: the initial weights (the random arm's encoder of the same seed)."],
                    )
                )
    return tables


def attention(results: Dict[str, Any]) -> List[Table]:
    arms = {n: a["aggregate"] for n, a in results["arms"].items() if "attention_mean" in a["aggregate"]}
    if not arms:
        return []
    blocks = sorted({b for agg in arms.values() for b in agg["attention_mean"]}, key=int)
    header = ["block"] + [f"{n}: {what}" for n in arms for what in ("mean distance (px)", "spread over heads (px)")]
    rows = [
        [b]
        + [
            cell
            for agg in arms.values()
            for cell in (fmt(agg["attention_mean"].get(b)), fmt(agg["attention_spread"].get(b)))
        ]
        for b in blocks
    ]
    uniform = sorted({round(agg["attention_uniform_px"], 2) for agg in arms.values()})
    notes = [
        "mean over heads of each head's attention-weighted distance (cls excluded), then mean ± std over seeds; "
        "spread = std over the heads of a block (the paper's diversity). Uniform attention: "
        + ", ".join(f"{u:.2f} px" for u in uniform)
        + "."
    ]
    return [Table("attention", "Attention distance per block", header, rows, notes)]


def costs(results: Dict[str, Any]) -> Table:
    header = [
        "arm",
        "pre-train / init (s)",
        "fine-tune (s)",
        "probes (s)",
        "attention (s)",
        "convergence (s)",
        "pre-train FLOPs",
        "fine-tune FLOPs",
        "evaluation FLOPs",
        "pre-train GFLOP/image",
    ]
    rows = []
    for name, arm in results["arms"].items():
        sec, flops = arm["aggregate"]["seconds"], arm["aggregate"]["flops"]
        train = training_stage(arm["kind"])
        per_image = [s[train].get("flops_per_image") for s in arm["seeds"].values() if train in s]
        rows.append(
            [
                name,
                fmt(sec.get(train), 1),
                fmt(sec.get("finetune"), 1),
                fmt(sec.get("probe"), 1),
                fmt(sec.get("attention"), 1),
                fmt(sec.get("convergence"), 1),
                fmt_flops(_mean(flops.get(train))),
                fmt_flops(_mean(flops.get("finetune"))),
                fmt_flops(_mean(flops.get("evaluation"))),
                f"{per_image[0] / 1e9:.3f}" if per_image and per_image[0] else "-",
            ]
        )
    notes = [
        "seconds: wall-clock of each stage (a resumed training run counts the time its killed attempts saved in "
        "checkpoints); FLOPs: per-image count x images processed."
    ]
    return Table("cost", "Cost per arm (mean over seeds)", header, rows, notes)


def build_tables(results: Dict[str, Any]) -> List[Table]:
    return (
        [headline(results)]
        + per_block(results, "linear")
        + per_block(results, "knn")
        + convergence(results)
        + attention(results)
        + [costs(results)]
    )


def markdown_table(table: Table) -> str:
    lines = [
        f"### {table.title}",
        "",
        "| " + " | ".join(table.header) + " |",
        "|" + "|".join("---" for _ in table.header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [f"_{n}_" for n in table.notes]
    return "\n".join(lines) + "\n"


def describe_arm(arm: Dict[str, Any]) -> str:
    m = arm.get("model", {})
    what = (
        "untrained"
        if arm["kind"] == "random"
        else (
            f"decoders on blocks {', '.join(map(str, m['supervised_blocks']))}, {m.get('target')} target"
            if m.get("supervised_blocks")
            else ""
        )
    )
    size = f"ViT {m['embed_dim']}w x {m['depth']}, {m['img_size']}px/p{m['patch_size']}" if m.get("depth") else ""
    return ", ".join(x for x in (m.get("preset") or "", size, what) if x) or arm["kind"]


def render_markdown(results: Dict[str, Any]) -> str:
    m = results["machine"]
    head = [
        f"# {results['title']}",
        "",
        f"`{results['command']}`",
        "",
        f"Machine: {m.get('cpu')} ({m.get('cpu_count')} CPUs), GPU: {m.get('gpu') or 'none'}, torch "
        f"{m.get('torch')}, precision auto = {m.get('precision_auto')}; deepmim {m.get('deepmim')} at commit "
        f"{m.get('git_commit') or 'unknown'}{' (with local changes)' if m.get('git_dirty') else ''}; "
        f"written {results['created']}.",
        "",
        "Arms: " + "; ".join(f"**{name}** ({describe_arm(arm)})" for name, arm in results["arms"].items()) + ".",
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(markdown_table(t) for t in build_tables(results))
