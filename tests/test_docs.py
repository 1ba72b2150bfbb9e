"""The documentation stays true: the MkDocs site builds in strict mode (a broken link, a missing page or a
page left out of the navigation fails), and the product (README, docs pages, source, recipes and tests)
states what the code does, never which machine, date, commit or round of work a number came from.
Measurements and their history live in dated results pages (docs/results/, benchmarks/results/), which
the product links to; the performance page, which shows the current benchmark tables by machine class,
is read as one of them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What would date a sentence: machine names, rounds of work, dates, commit hashes, a developer's paths.
HISTORY = {
    "machine name": re.compile(
        r"\b(?:EPYC|Epyc|Xeon|XEON|H100|H200|A100|AMX (?:CPU|Xeon|machine|box|run|table|rows?))\b"
    ),
    "issue or round": re.compile(r"\b(?:issue|round|session|PR)s? ?#?\d+\b", re.IGNORECASE),
    "date": re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b"),
    # 7-40 hex characters with at least one digit and one letter, standing alone (not part of a path,
    # an identifier, a hex colour or a longer digest)
    "commit hash": re.compile(r"(?<![\w#./:-])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w-])"),
    "developer path": re.compile(r"/work/main\b|/tmp/fresh\b"),
}
RESULTS_PATH = re.compile(r"[\w./-]*results/[\w./-]*")  # a path into a results folder may name its run


def product_files():
    docs = ROOT / "docs"
    pages = [p for p in docs.rglob("*.md") if p.relative_to(docs).parts[0] != "results" and p.name != "performance.md"]
    code = [p for folder in ("src", "tests") for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml")]
    return [ROOT / "README.md", ROOT / "mkdocs.yml", *pages, *code]


def history_hits(text: str):
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        line = RESULTS_PATH.sub("", line)
        hits += [(number, kind, m.group(0)) for kind, pattern in HISTORY.items() for m in pattern.finditer(line)]
    return hits


@pytest.mark.parametrize(
    "text, kind",
    [
        ("measured on the 2-core EPYC", "machine name"),
        ("as in issue 14", "issue or round"),
        ("a demo time from round 3", "issue or round"),
        ("measured 2026-12-03", "date"),
        ("at commit 246d903 with the old recipe", "commit hash"),
        ("git clone -q /work/main /tmp/x", "developer path"),
    ],
)
def test_the_history_check_finds_history(text, kind):
    assert [hit[1] for hit in history_hits(text)] == [kind]


@pytest.mark.parametrize(
    "text",
    [
        "colour #1f77b4 and 0xdeadbeef",
        "sha256 " + "ab12" * 16,
        "data.mean 0.2860, lr 1e-3 x 4096",
        "see [the results](results/2026-12-03-xeon-amx/README.md)",
        "bf16 hardware (AVX512-BF16 / AMX)",
        "the authors' 32 V100s",
        "checkpoint_path='encoder.safetensors'",
        "deadbeef",
        "1234567",
    ],
)
def test_the_history_check_leaves_ordinary_text_alone(text):
    assert history_hits(text) == []


def test_no_history_in_the_product():
    found = []
    for path in product_files():
        if path.name == "test_docs.py":  # its own examples above
            continue
        found += [
            f"{path.relative_to(ROOT)}:{n}: {kind} {match!r}"
            for n, kind, match in history_hits(path.read_text(errors="replace"))
        ]
    assert not found, "history in the product (move it to a dated results page):\n" + "\n".join(found)


def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install 'deepmim[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install 'deepmim[docs]')")
    site = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for page in (
        "index",
        "reproducing",
        "configuration",
        "training",
        "data",
        "downstream",
        "segmentation",
        "analysis",
        "interop",
        "performance",
        "ARCHITECTURE",
    ):
        built = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), f"{page}.md was not built"
    assert "Reproducing DeepMIM" in (site / "reproducing" / "index.html").read_text()


def test_the_readme_is_a_short_product_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for heading in (
        "## Install",
        "## Two commands",
        "## Quickstart",
        "## Recipes",
        "## Python API",
        "## Citation",
        "## License",
    ):
        assert heading in readme, heading
    for target in re.findall(r"\]\(((?!https?://)[^)#]+)", readme):  # every relative link resolves
        assert (ROOT / target).exists(), f"README links to a missing {target}"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    cff = (ROOT / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in cff and "DeepMIM: Deep Supervision for Masked Image Modeling" in cff
