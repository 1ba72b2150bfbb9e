"""The README's quickstart, run as a newcomer would: its commands copied as written onto an ImageFolder and
a mask folder of their own, with only the tiny-size overrides the README itself lists appended (its "first
try" table). Scoring a checkpoint again must give what training logged for it."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def quickstart_block() -> str:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)


def tiny_overrides() -> dict:
    """{'deepmim pretrain': '...', ...} from the README's table of overrides for a first try."""
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for cells in re.findall(r"^\|(.+)\|(.+)\|\s*$", section, re.MULTILINE):
        commands, overrides = (c.strip() for c in cells)
        if overrides.startswith("`") and "deepmim" in commands:
            for command in re.findall(r"`(deepmim [\w -]+?)`", commands):
                rows[command] = overrides.strip("`")
    return rows


def commands(block: str):
    """(variables, commands): logical lines with continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    variables, cmds = {}, []
    for line in joined.splitlines():
        line = line.split("  #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        assignment = re.fullmatch(r"([A-Z_]+)=(\S+)", line)
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
        else:
            cmds.append(line)
    return variables, cmds


def write_image_folder(root: Path, rng) -> None:
    for split, per_class in (("train", 16), ("val", 8)):
        for label, name in enumerate(["cats", "dogs"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
                pixels[..., label] += 150  # the class is the dominant colour
                Image.fromarray(pixels).save(folder / f"{i}.jpg")


def write_mask_folder(root: Path, rng, classes: int) -> None:
    for split, count in (("train", 8), ("val", 4)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
            mask = np.zeros((40, 48), np.uint8)
            for c in range(1, classes):
                mask[4 + 8 * c : 12 + 8 * c, 6 * c : 6 * c + 20] = c
                pixels[mask == c, c % 3] += 150
            Image.fromarray(pixels).save(root / "images" / split / f"{i}.jpg")
            Image.fromarray(mask).save(root / "annotations" / split / f"{i}.png")


def test_the_quickstart_parses_into_the_five_steps():
    variables, cmds = commands(quickstart_block())
    assert set(variables) >= {"DATA", "MASKS"}
    subcommands = [" ".join(shlex.split(c)[: 3 if c.startswith("deepmim segment") else 2]) for c in cmds]
    assert subcommands == [
        "deepmim pretrain",
        "deepmim finetune",
        "deepmim evaluate",
        "deepmim probe-layers",
        "deepmim segment train",
        "deepmim segment eval",
    ]
    assert set(tiny_overrides()) == {
        "deepmim pretrain",
        "deepmim finetune",
        "deepmim probe-layers",
        "deepmim segment train",
    }


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_written(tmp_path):
    rng = np.random.default_rng(0)
    variables, cmds = commands(quickstart_block())
    seg_classes = int(variables.get("SEG_CLASSES", 2))
    write_image_folder(tmp_path / "my_images", rng)
    write_mask_folder(tmp_path / "my_masks", rng, seg_classes)
    env = dict(
        os.environ,
        DATA=str(tmp_path / "my_images"),
        MASKS=str(tmp_path / "my_masks"),
        SEG_CLASSES=str(seg_classes),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(ROOT / "src"),
        MPLBACKEND="Agg",
    )
    extra = tiny_overrides()
    outputs = []
    for command in cmds:
        key = next((k for k in extra if command.startswith(k + " ")), None)
        line = command + (" " + extra[key] if key else "")
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout + done.stderr)

    runs = tmp_path / "runs"
    for name in ("my_pretrain", "my_finetune", "my_segment"):
        assert (runs / name / "checkpoint-last.pt").is_file(), name
    # evaluate scores the fine-tuned checkpoint on the same val split as its last evaluation in training
    last_eval = [
        json.loads(r)
        for r in (runs / "my_finetune" / "metrics.jsonl").read_text().splitlines()
        if json.loads(r)["type"] == "eval"
    ][-1]
    top1 = float(re.search(r"top1[ =:]+([\d.]+)", outputs[2]).group(1))
    assert top1 == pytest.approx(last_eval["top1"], abs=1e-3)
    assert int(last_eval["images"]) == 16  # the 2 x 8 val images
    # the probe of every block of the 6-block encoder
    layers = json.loads((runs / "my_probe" / "layers.json").read_text())
    assert "1" in json.dumps(layers) and (runs / "my_probe" / "layers.csv").is_file()
    # segment eval gives the mIoU the training's last evaluation logged
    seg_eval = [
        json.loads(r)
        for r in (runs / "my_segment" / "metrics.jsonl").read_text().splitlines()
        if json.loads(r)["type"] == "eval"
    ][-1]
    miou = float(re.search(r"mIoU\s+([\d.]+)", outputs[5]).group(1))
    assert miou == pytest.approx(seg_eval["mIoU"], abs=0.01)
