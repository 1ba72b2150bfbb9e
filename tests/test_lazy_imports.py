"""`deepmim --help`, `recipes` and `presets` answer without importing torch or timm (lazy imports); the
lazily imported package still hands out its models with every built-in target registered."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "timm")


def modules_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; the heavy top-level modules it imported, and what it printed."""
    probe = (
        f"import sys, json\n{code}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {"heavy": json.loads(done.stderr.strip().splitlines()[-1]), "stdout": done.stdout}


@pytest.mark.parametrize("argv", [["--help"], ["recipes"], ["presets"], []])
def test_light_commands_import_neither_torch_nor_timm(argv):
    run = modules_after(f"from deepmim.cli.main import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert run["heavy"] == []
    assert {"--help": "Every job is configured", "recipes": "[pretrain]", "presets": "decoders"}.get(
        (argv or ["--help"])[0], ""
    ) in run["stdout"]


def test_the_lazy_package_still_registers_every_built_in_target():
    run = modules_after(
        "from deepmim.models import DeepMIM\nfrom deepmim.models.target import TARGETS\n"
        "from tests.helpers.models import tiny_model_config\ncfg = tiny_model_config()\n"
        "cfg.target = {'name': 'hog', 'cell_size': 4}\nDeepMIM(cfg)\nprint(sorted(TARGETS))"
    )
    assert {"pixel", "hog", "teacher", "hybrid"} <= set(eval(run["stdout"].strip()))
    import deepmim

    assert deepmim.create_model("deepmim_pixel_vit_micro_p4_32").encoder.depth == 6
