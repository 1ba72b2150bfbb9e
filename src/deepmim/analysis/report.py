"""One self-contained report.html for `deepmim analyze`: every figure embedded as a base64 PNG data URI,
tables of the numbers, and a short explanation of each measure. No external files, scripts or fonts.

A few lines of inline script stamp `data-images="ok N"` (or `broken K of N`) on <body> once the page has
loaded, so a headless browser's dumped DOM says whether every image decoded."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Dict, List


def short_names(checkpoints: List[str]) -> Dict[str, str]:
    """Distinct short labels for checkpoints in tables and figures: the file name, or parent/file
    when names collide."""
    stems = [Path(c).name for c in checkpoints]
    if len(set(stems)) == len(stems):
        return dict(zip(checkpoints, stems))
    return {
        c: str(Path(Path(c).parent.name) / Path(c).name) + (f" #{i}" if checkpoints.count(c) > 1 else "")
        for i, c in enumerate(checkpoints)
    }


SECTIONS = [
    (
        "probe",
        "Per-layer linear probe and k-NN",
        "A linear probe (MAE's head: BatchNorm without affine + Linear, trained as set by <code>probe.*</code>, "
        "LARS by default, on frozen, cached features; the same code and cache as <code>deepmim probe-layers</code>) "
        "and DINO's weighted k-NN (<code>knn.*</code>) on the pooled tokens after every block. Claim (1) of DeepMIM: deep supervision makes the shallower blocks' "
        "features more meaningful, i.e. higher accuracy at intermediate blocks.",
    ),
    (
        "attention",
        "Attention distance of every head",
        "For each head: the attention-weighted mean distance in pixels between a query patch and the patches it "
        "attends to (patch-grid distance &times; patch size; the cls token excluded and each query's weights "
        "over patches renormalised), averaged over queries and images, on full (unmasked) images. One dot per "
        "head. Claim (3): deep supervision widens the diversity of attention, i.e. a larger spread of the dots "
        "within a block (the std over heads in the table).",
    ),
    (
        "cka",
        "Representation similarity (linear CKA)",
        "Linear centred kernel alignment (Kornblith et al. 2019, standard biased-HSIC estimator) between the "
        "pooled val features of two blocks: 1 for identical representations up to rotation and scale, near 0 "
        "for unrelated ones. Within a model it shows which blocks compute similar features; between two "
        "checkpoints the diagonal compares the same block (reported only when the depths match).",
    ),
    (
        "reconstruction",
        "Reconstructions by every supervised head",
        "The first validation images, one fixed mask (the same <code>noise</code> for every checkpoint of the "
        "same patch grid), and each head's prediction of the masked patches pasted into the visible ones. "
        "The table gives the mean squared error over the masked pixels in [0, 1] image space.",
    ),
    (
        "loss",
        "Training loss of every head",
        "From the run's <code>metrics.jsonl</code> next to the checkpoint: the loss of every supervised head and "
        "the weighted total against the optimizer step. Totals of runs with different numbers of heads are not "
        "comparable; the last block's head is, and is shown side by side.",
    ),
    (
        "convergence",
        "Convergence: per-layer accuracy along pre-training",
        "Where the run kept periodic checkpoints (<code>train.save_every_epochs</code>), the same probes on each "
        "of them, one line per block. Claim (2): deep supervision speeds up convergence, i.e. higher accuracy "
        "after fewer epochs.",
    ),
]


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: List[str], rows: List[List[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _blocks_of(per_ckpt: Dict[str, Dict[str, object]]) -> List[str]:
    return [str(b) for b in sorted({int(b) for d in per_ckpt.values() for b in d})]


def _section_tables(key: str, result: Dict) -> str:
    names = list(result["checkpoints"])
    out = []
    if key == "probe" and (result.get("probe") or result.get("knn")):
        for kind, label in (("probe", "linear-probe top-1 (%)"), ("knn", "k-NN top-1 (%)")):
            data = result.get(kind)
            if not data:
                continue
            rows = [
                [b] + [_pct(data[n][b]["top1"]) if b in data.get(n, {}) else "-" for n in names]
                for b in _blocks_of(data)
            ]
            out.append(f"<h3>{label}</h3>" + _table(["block"] + names, rows))
    elif key == "attention" and result.get("attention"):
        data = result["attention"]
        depth = max(len(a["mean"]) for a in data.values())
        rows = []
        for i in range(depth):
            rows.append(
                [i + 1]
                + [
                    f"{data[n]['mean'][i]:.2f} \u00b1 {data[n]['std'][i]:.2f} "
                    f"({data[n]['min'][i]:.1f}\u2013{data[n]['max'][i]:.1f})"
                    if n in data and i < len(data[n]["mean"])
                    else "-"
                    for n in names
                ]
            )
        out.append(_table(["block"] + [f"{n}: mean \u00b1 std over heads (min\u2013max), px" for n in names], rows))
        refs = sorted({(a["uniform_px"], a["max_possible_px"]) for a in data.values() if "uniform_px" in a})
        images = ", ".join(str(n) for n in sorted({a["images"] for a in data.values()}))
        out.append(
            "<p>"
            + "; ".join(
                f"uniform attention gives {u:.2f} px, the largest possible distance is {m:.2f} px" for u, m in refs
            )
            + f" (over {images} images).</p>"
        )
    elif key == "cka" and result.get("cka"):
        for pair, e in result["cka"].get("between", {}).items():
            if "same_block" in e:
                rows = [[b, f"{v:.3f}"] for b, v in e["same_block"].items()]
                out.append(f"<h3>same block: {html.escape(pair)}</h3>" + _table(["block", "linear CKA"], rows))
        out.append(f"<p>{result['cka'].get('samples', '?')} validation examples.</p>")
    elif key == "reconstruction" and result.get("reconstruction"):
        rows = [
            [n, head, f"{v:.4f}"]
            for n, r in result["reconstruction"].items()
            for head, v in r["masked_pixel_mse"].items()
        ]
        out.append(_table(["checkpoint", "head", "masked-pixel MSE"], rows))
    elif key == "loss" and result.get("loss"):
        rows = [
            [n, k, f"{s['first']:.4f}", f"{s['last']:.4f}", f"{s['last_10pct_mean']:.4f}", s["steps"]]
            for n, losses in result["loss"].items()
            for k, s in losses.items()
        ]
        out.append(_table(["run", "series", "first", "last", "mean of the last 10% of rows", "steps"], rows))
    elif key == "convergence" and result.get("convergence"):
        for n, conv in result["convergence"].items():
            for kind, label in (("linear", "linear-probe"), ("knn", "k-NN")):
                if kind not in conv:
                    continue
                epochs = list(conv[kind])
                blocks = _blocks_of(conv[kind])
                rows = [[b] + [_pct(conv[kind][e].get(b)) for e in epochs] for b in blocks]
                out.append(
                    f"<h3>{html.escape(n)}: {label} top-1 (%) after each epoch</h3>"
                    + _table(["block"] + [f"epoch {e}" for e in epochs], rows)
                )
    return "\n".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}figcaption{font-size:.8em;color:#555;
max-width:640px}img{max-width:100%;border:1px solid #eee}.explain{color:#333;background:#f8f8f4;padding:.6em 1em;
border-left:3px solid #cc9}code{background:#f0f0f0;padding:0 3px}.notes li{color:#744}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, bad = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) bad++; }
  document.body.setAttribute('data-images', bad ? ('broken ' + bad + ' of ' + imgs.length) : ('ok ' + imgs.length));
});
"""


def render_report(result: Dict, fig_dir: Path) -> str:
    """The report as a string; figures are read from fig_dir and embedded."""
    names = list(result["checkpoints"])
    info_rows = [
        [
            n,
            i["path"],
            i["depth"],
            i["embed_dim"],
            i["num_heads"],
            f"{i['img_size']}/{i['patch_size']}",
            ", ".join(map(str, i["supervised_blocks"])) if i.get("supervised_blocks") else "?",
            i["epoch"] if i.get("epoch") is not None else "?",
        ]
        for n, i in result["checkpoints"].items()
    ]
    parts = [
        f"<h1>deepmim analyze: {html.escape(' vs '.join(names))}</h1>",
        "<p>DeepMIM claims that deep supervision (1) makes shallower layers learn more meaningful "
        "representations, (2) speeds up convergence and (3) widens the diversity of attention. Each section "
        "below measures one of these on the checkpoints listed here; every number is also in "
        "<code>analysis.json</code> and <code>metrics.csv</code>.</p>",
        _table(
            ["checkpoint", "path", "blocks", "width", "heads", "img/patch", "supervised blocks", "epochs"], info_rows
        ),
    ]
    data = result.get("config", {}).get("data", {})
    feats = result.get("config", {}).get("features", {})
    parts.append(
        f"<p>Data: <code>{html.escape(str(data.get('name')))}</code>"
        f"{' ' + html.escape(str(data.get('path'))) if data.get('path') else ''}, "
        f"splits {html.escape(str(feats.get('train_split')))} &rarr; {html.escape(str(feats.get('val_split')))}"
        f", pooling <code>{html.escape(str(feats.get('pool')))}</code>.</p>"
    )
    for key, title, explain in SECTIONS:
        figs = [f for f in result.get("figures", []) if f["section"] == key]
        tables = _section_tables(key, result)
        if not figs and not tables:
            continue
        parts.append(f'<h2 id="{key}">{title}</h2><p class="explain">{explain}</p>')
        for f in figs:
            parts.append(
                f"<figure>{_img(fig_dir / f['file'], f['caption'])}"
                f"<figcaption>{html.escape(f['caption'])} (<code>{html.escape(f['file'])}</code>)"
                f"</figcaption></figure>"
            )
        parts.append(tables)
    if result.get("notes"):
        parts.append(
            "<h2>Notes</h2><ul class='notes'>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"])
            + "</ul>"
        )
    if result.get("timings"):
        parts.append(
            "<p>Seconds per measure: "
            + html.escape(", ".join(f"{k} {v}" for k, v in result["timings"].items()))
            + "</p>"
        )
    cfg = json.dumps(result.get("config", {}), indent=2)
    parts.append(f"<details><summary>configuration</summary><pre>{html.escape(cfg)}</pre></details>")
    body = "\n".join(parts)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>deepmim analyze</title>"
        f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>\n{body}\n</body></html>\n"
    )


def write_report(result: Dict, fig_dir: Path, out_path: Path) -> Path:
    out_path.write_text(render_report(result, fig_dir), encoding="utf-8")
    return out_path


# ---- building blocks for other self-contained pages (deepmim study) -------------------------------


def figure_html(path: Path, caption: str) -> str:
    """A <figure> with the PNG at `path` embedded as a base64 data URI."""
    return (
        f"<figure>{_img(path, caption)}<figcaption>{html.escape(caption)} (<code>{html.escape(path.name)}"
        f"</code>)</figcaption></figure>"
    )


def table_html(header: List[str], rows: List[List[object]]) -> str:
    return _table(header, rows)


def page_html(title: str, body: str) -> str:
    """A complete page in the report's style (same CSS, same image-check stamp on <body>)."""
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>\n{body}\n</body></html>\n"
    )
