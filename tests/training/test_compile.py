"""The compile rule, and regional compile equal to eager with the same parameter names."""

import pytest
import torch

from deepmim.models import DeepMIM
from deepmim.training.compile import COMPILE_MIN_STEPS, compile_blocks, should_compile
from deepmim.training.parallel import transformer_blocks
from tests.helpers.models import tiny_model_config


def test_compile_rule(monkeypatch):
    import deepmim.training.compile as compile_mod

    real = compile_mod.has_cpp_compiler
    monkeypatch.setattr(compile_mod, "has_cpp_compiler", lambda: True)
    assert should_compile(True, 1) and not should_compile(False, 10**6)
    for device, steps in COMPILE_MIN_STEPS.items():
        assert not should_compile("auto", steps - 1, device) and should_compile("auto", steps, device)
    assert COMPILE_MIN_STEPS["cpu"] > 640 * 10  # the demo (640 steps) stays eager, by a wide margin
    big = 10 * COMPILE_MIN_STEPS["cpu"]
    assert not should_compile("auto", big, "cpu", "fp32") and should_compile("auto", big, "cpu", "bf16")
    assert should_compile("auto", big, "cuda", "fp32") and should_compile(True, 1, "cpu", "fp32")
    with pytest.raises(Exception, match="train.compile"):
        should_compile("yes", 10)
    monkeypatch.setattr(compile_mod, "has_cpp_compiler", real)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compile_mod.shutil, "which", lambda name: None)  # no C++ compiler: inductor cannot build
    assert not real() and not should_compile("auto", 10**6, "cuda")


@pytest.mark.slow
def test_regional_compile_equals_eager_and_keeps_parameter_names():
    torch.manual_seed(0)
    eager = DeepMIM(tiny_model_config())
    compiled = DeepMIM(tiny_model_config())
    compiled.load_state_dict(eager.state_dict())
    assert compile_blocks(transformer_blocks(compiled)) == 6  # 4 encoder blocks + 2 one-block decoders
    assert list(compiled.state_dict()) == list(eager.state_dict())
    images = torch.randn(4, 3, 16, 16)
    losses = []
    for model in (eager, compiled):
        out = model(images, generator=torch.Generator().manual_seed(3))  # masks drawn outside the blocks
        out.loss.backward()
        losses.append((out.loss.item(), out.mask, model.encoder.blocks[0].attn.qkv.weight.grad.clone()))
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-5)
    assert torch.equal(losses[0][1], losses[1][1])
    assert torch.allclose(losses[0][2], losses[1][2], rtol=1e-4, atol=1e-6)
