"""report.html of a study: the tables and figures of results.json in `deepmim analyze`'s self-contained page
(the same CSS, figures embedded as base64 PNGs, no external files)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List

from ...analysis.report import figure_html, page_html, table_html
from .tables import build_tables

SECTIONS = [
    (
        "headline",
        "Headline",
        "One row per arm: fine-tuned top-1 at equal fine-tuning epochs, the frozen-feature probes of the best and the "
        "last block, k-NN, and what the arm cost to train. Read equal-epoch comparisons across a row's accuracy "
        "columns and equal-compute ones against the FLOPs column and the figure.",
    ),
    (
        "probe",
        "Frozen features per block",
        "MAE's linear probe (BatchNorm without affine + Linear, on cached features) and DINO's weighted k-NN on the "
        "pooled tokens after every block, train split &rarr; val split. DeepMIM's claim (1): deep supervision makes "
        "the intermediate blocks' features better.",
    ),
    (
        "convergence",
        "Convergence along pre-training",
        "The same probes on the initial weights (epoch 0) and on every checkpoint the pre-training kept "
        "(train.save_every_epochs). Claim (2): deep supervision converges faster. The FLOPs axis compares at equal "
        "compute (a DeepMIM epoch costs more than an MAE epoch).",
    ),
    (
        "attention",
        "Attention distance",
        "Per head, the attention-weighted mean distance between a query patch and the patches it attends to, on full "
        "val images; per block, the mean over heads and their spread. Claim (3): deep supervision diversifies "
        "attention (a wider spread).",
    ),
    ("cost", "Cost", "Wall-clock seconds per stage and FLOPs (FlopCounterMode per image x images processed)."),
]


def render_study_report(results: Dict[str, Any], fig_dir: Path, figures: List[Dict[str, str]]) -> str:
    m = results["machine"]
    arms = ", ".join(
        f"{n} ({a['kind']}{', ' + a['model']['preset'] if a['model'].get('preset') else ''})"
        for n, a in results["arms"].items()
    )
    parts = [
        f"<h1>{html.escape(results['title'])}</h1>",
        f"<p>Arms: {html.escape(arms)}; seeds {html.escape(', '.join(map(str, results['seeds'])))}. Every "
        f"number is in <code>results.json</code> (per seed and aggregated); cells are mean &plusmn; sample std "
        f"over seeds.</p>",
        f"<p><code>{html.escape(results['command'])}</code></p>",
        table_html(
            ["cpu", "CPUs", "gpu", "torch", "precision (auto)", "deepmim", "commit", "written"],
            [
                [
                    m.get("cpu"),
                    m.get("cpu_count"),
                    m.get("gpu") or "none",
                    m.get("torch"),
                    m.get("precision_auto"),
                    m.get("deepmim"),
                    (m.get("git_commit") or "unknown") + (" (local changes)" if m.get("git_dirty") else ""),
                    results["created"],
                ]
            ],
        ),
    ]
    tables = build_tables(results)
    for key, title, explain in SECTIONS:
        figs = [f for f in figures if f["section"] == key]
        mine = [t for t in tables if t.section == key]
        if not figs and not mine:
            continue
        parts.append(f'<h2 id="{key}">{title}</h2><p class="explain">{explain}</p>')
        for t in mine:
            parts.append(
                f"<h3>{html.escape(t.title)}</h3>"
                + table_html(t.header, t.rows)
                + "".join(f"<p><small>{html.escape(n)}</small></p>" for n in t.notes)
            )
        parts += [figure_html(fig_dir / f["file"], f["caption"]) for f in figs]
    cfg = json.dumps(results.get("config", {}), indent=2)
    parts.append(f"<details><summary>study configuration</summary><pre>{html.escape(cfg)}</pre></details>")
    return page_html(results["title"], "\n".join(parts))


def write_study_report(results: Dict[str, Any], out: Path, figures: List[Dict[str, str]]) -> Path:
    path = out / "report.html"
    path.write_text(render_study_report(results, out, figures), encoding="utf-8")
    return path
