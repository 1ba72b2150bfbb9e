"""Every benchmark JSON says what it was measured on: CPU/GPU model, native bf16, torch, commit and date
(benchmarks/machine.py), and the result folders are named `<date>_<machine>_<commit>`."""

import ast
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from machine import machine_stamp, results_folder_name  # noqa: E402  benchmarks/machine.py


def test_machine_stamp_holds_the_machine_the_code_and_the_date():
    stamp = machine_stamp()
    assert isinstance(stamp["cpu"], str) and stamp["cpu"]
    assert stamp["torch"] == torch.__version__
    assert stamp["gpu"] is None and stamp["device"] == "cpu"
    assert isinstance(stamp["bf16_native"], bool)
    assert stamp["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", stamp["git_commit"])
    when = datetime.datetime.fromisoformat(stamp["date_utc"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 600
    json.dumps(stamp, allow_nan=False)  # strict JSON


def test_results_folder_name_is_date_machine_commit():
    name = results_folder_name("my-cpu")
    date, machine, commit = name.split("_")
    datetime.date.fromisoformat(date)
    assert machine == "my-cpu" and re.fullmatch(r"[0-9a-f]{7,12}|nocommit", commit)


def _writes_json(tree: ast.AST) -> bool:
    names = {
        n.attr if isinstance(n, ast.Attribute) else n.id
        for n in ast.walk(tree)
        if isinstance(n, (ast.Attribute, ast.Name))
    }
    return bool({"dump", "dumps"} & names)


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "machine.py"))
def test_every_script_that_writes_json_stamps_it(script):
    """A script that writes a JSON result sets report["machine"] = machine_stamp(...) before writing it."""
    source = (BENCHMARKS / script).read_text()
    tree = ast.parse(source)
    if not _writes_json(tree) or script == "table.py":  # table.py reads results, writes markdown
        return
    assert "machine_stamp(" in source, f"{script} writes JSON without benchmarks/machine.py's stamp"
    stamp_at = source.index('report["machine"] = machine_stamp(')
    first_write = min(i for i in (source.find("json.dump("), source.find("json.dumps(")) if i >= 0)
    assert stamp_at < first_write


def test_results_folders_follow_the_naming_and_the_index_names_each():
    results = BENCHMARKS / "results"
    folders = sorted(p.name for p in results.iterdir() if p.is_dir())
    assert folders, "benchmarks/results/ holds no result folder"
    index = (results / "README.md").read_text()
    for name in folders:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_[a-z0-9-]+_[0-9a-f]{7,12}", name), name
        assert name in index, f"benchmarks/results/README.md does not mention {name}"
    loose = [p.name for p in results.iterdir() if p.is_file() and p.name != "README.md"]
    assert loose == [], f"result files outside a run folder: {loose}"


@pytest.mark.slow
def test_a_benchmark_run_writes_the_stamp(tmp_path):
    out = tmp_path / "data.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "data_throughput.py"),
            "--img-size",
            "32",
            "--images",
            "2",
            "--rounds",
            "1",
            "--width",
            "48",
            "--height",
            "40",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] == torch.__version__
    assert {"cpu", "gpu", "bf16_native", "git_commit", "date_utc"} <= set(report["machine"])
