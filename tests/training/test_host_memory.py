"""Host memory: freed memory is reused so steps stop page-faulting, as the config says."""

import dataclasses
import platform
import subprocess
import sys

import pytest

from deepmim.config.schema import DataConfig, FeatureConfig
from deepmim.tasks.pretrain import run_pretrain
from tests.helpers.models import save_tiny_pretrained
from tests.helpers.runs import tiny_pretrain_config

FAULTS_SCRIPT = """
import resource, sys, torch
from deepmim.training.host_memory import reuse_freed_host_memory
print(reuse_freed_host_memory(sys.argv[1] == "reuse"))
torch.set_num_threads(2)  # the faults come from the OpenMP threads' arenas as much as the main one
from deepmim.models.presets import preset_config
from deepmim.models.deepmim import DeepMIM
torch.manual_seed(0)
model = DeepMIM(preset_config("deepmim_pixel_vit_micro_p4_32"))
images = torch.randn(16, 3, 32, 32)
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(images).loss.backward()
    # one activation of a real batch's size: above the 32 MiB up to which glibc's own threshold adapts, so
    # left alone it is unmapped at every free on any machine (the small model's own faults vary by machine)
    activation = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    del activation
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_host_memory_is_reused_so_steps_stop_page_faulting():
    """Left alone, glibc unmaps and trims a step's large freed activations and every step faults them in
    again (a 64 MiB one: 16384 minor faults per step with 4 KiB pages; the micro preset's own small ones
    fault thousands of times per step on some machines, almost never on others, as glibc's adaptive
    threshold settles); tuned, warm steps fault >10x less."""
    faults = {}
    for mode in ("default", "reuse"):
        run = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.split("\n")
        faults[mode] = ([int(n) for n in lines[1:9]], lines[0])
    assert faults["reuse"][1].startswith("host malloc keeps freed blocks up to")
    reused, default = sum(faults["reuse"][0][2:]), sum(faults["default"][0][2:])  # steps 3-8, warm
    assert default >= 100, faults  # what the setting removes (and proof that the count sees faults; >= 100
    # even with transparent huge pages always on: 32 faults per 64 MiB)
    assert reused * 10 <= default, faults


def test_feature_extraction_reuses_host_memory_as_its_config_says(tmp_path, monkeypatch):
    import deepmim.analysis.features as features

    asked = []
    monkeypatch.setattr(features, "reuse_freed_host_memory", lambda enabled=True: asked.append(enabled) or "")
    ckpt = save_tiny_pretrained(tmp_path / "tiny.pt")
    data = DataConfig(name="embedded", img_size=16, num_samples=8)
    fc = FeatureConfig(cache_dir=None, progress=False, batch_size=8, blocks=[2], precision="fp32")
    features.extract_features(ckpt, data, "val", fc)
    features.extract_features(ckpt, data, "val", dataclasses.replace(fc, reuse_host_memory=False))
    assert asked == [True, False]


def test_training_logs_the_host_memory_setting_and_can_leave_malloc_alone(tmp_path, capsys):
    from deepmim.training.host_memory import reuse_freed_host_memory

    run_pretrain(tiny_pretrain_config(tmp_path / "off", epochs=1, reuse_host_memory=False))
    assert "host malloc left as it is (train.reuse_host_memory=false)" in capsys.readouterr().err
    run_pretrain(tiny_pretrain_config(tmp_path / "on", epochs=1))
    assert reuse_freed_host_memory(True) in capsys.readouterr().err
