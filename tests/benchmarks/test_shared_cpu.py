"""benchmarks/shared_cpu.py: a smoke run over every neighbourhood (the script, not the speed)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_smoke_runs_every_neighbourhood(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "shared_cpu.py"),
            "--smoke",
            "--steps",
            "4",
            "--log-every",
            "2",
            "--warmup",
            "1",
            "--settings",
            "fixed",
            "adapt",
            "--neighbours",
            "alone",
            "second deepmim run",
            "--",
            "data.num_samples=256",
            "model.encoder.depth=2",
            "model.heads=[{block: 2, decoder_dim: 64, decoder_depth: 1, decoder_heads: 2}]",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = done.stdout.strip().splitlines()[1:]
    assert len(rows) == 4
    assert all("%" in row for row in rows)  # every case gave images/s and a share of alone
    assert sum(" + " in row for row in rows) == 2  # the two side-by-side runs are both timed
