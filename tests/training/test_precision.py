"""Precision and attention kernels: forced bf16 on CPU close to fp32, the kernel chosen by timing and
reused on resume."""

import json
import math
import time

import pytest
import torch

from deepmim.tasks.pretrain import run_pretrain
from tests.helpers.runs import tiny_pretrain_config


def test_forced_bf16_on_cpu_trains_close_to_fp32(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_pretrain_config(tmp_path / precision, epochs=1, precision=precision, max_steps=1)
        run_pretrain(cfg)
        rows = [json.loads(line) for line in (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = rows[0]["loss"]
    assert math.isfinite(losses["bf16"])
    assert abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] < 2e-2


@pytest.mark.parametrize("slow_kernel", ["fused", "math"])
def test_attention_kernel_is_chosen_by_timing(slow_kernel):
    from deepmim.training.precision import fastest_attention

    state = {"fused": None}

    def step():
        current = "fused" if state["fused"] else "math"
        time.sleep(0.03 if current == slow_kernel else 0.001)

    fused, best = fastest_attention(step, lambda on: state.update(fused=on), torch.device("cpu"))
    assert fused == (slow_kernel == "math") and state["fused"] == fused  # left set to the winner
    assert best[slow_kernel] > 0.02 > best["math" if slow_kernel == "fused" else "fused"]


def test_measured_attention_is_recorded_and_reused_on_resume(tmp_path, monkeypatch):
    import deepmim.tasks.pretrain as pretrain_task

    calls = []
    monkeypatch.setattr(pretrain_task, "measure_attention", lambda *a: calls.append(1) or "math")
    cfg = tiny_pretrain_config(tmp_path, epochs=2, max_steps=4)
    cfg.model.attn_impl = "measure"
    run_pretrain(cfg)
    assert calls == [1]
    assert torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)["config"]["model"]["attn_impl"] == "math"
    assert "attn_impl: math" in (tmp_path / "config.yaml").read_text()
    cfg = tiny_pretrain_config(tmp_path, epochs=2, resume="auto")
    cfg.model.attn_impl = "measure"
    run_pretrain(cfg)
    assert calls == [1]  # not measured again: the recorded kernel keeps the resumed run exact
