"""benchmarks/matmul_time.py: the matmul-only ceilings in the benchmark tables rest on it."""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from matmul_time import matmul_seconds  # noqa: E402


def test_counts_matmul_kernels_of_forward_and_backward_and_nothing_else():
    layer = torch.nn.Linear(512, 512)
    x = torch.randn(512, 512)

    def step():
        for _ in range(10):
            with torch.autocast("cpu", torch.bfloat16):
                y = layer(x)  # addmm; its backward: mm for the weight's gradient
            y.float().sum().backward()
        time.sleep(0.05)  # not a matmul

    start = time.perf_counter()
    seconds = matmul_seconds(step)
    wall = time.perf_counter() - start
    assert 0 < seconds < wall - 0.05


def test_zero_without_matmuls():
    x = torch.randn(256, 256)

    def step():
        for _ in range(20):
            torch.nn.functional.gelu(x).softmax(-1)

    assert matmul_seconds(step) == 0.0
