"""How a model is spread over processes and made faster, in one place for every task.

- strategy "ddp": DistributedDataParallel (gradients all-reduced; each process holds the whole model);
- strategy "fsdp": FSDP2 `fully_shard` on every Transformer block and then the root, so parameters,
  gradients and optimizer states are sharded (ViT-L/H on small GPUs); checkpoints are gathered to a
  full state dict (see `full_state_dict`) and so load on any number of processes, or none;
- activation checkpointing: every Transformer block recomputes its activations in backward;
- torch.compile of every Transformer block, also a frozen teacher's (regional, `training.compile`; the
  saved weights keep their plain names).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from ..checkpoint import load_strict
from ..config.loader import ConfigError
from .distributed import is_distributed, wrap_ddp

STRATEGIES = ("ddp", "fsdp")


def transformer_blocks(model: nn.Module) -> list:
    """timm Transformer blocks (encoder, decoders, classifiers, the segmentation backbone): the unit
    of sharding and recompute."""
    from timm.models.beit import Block as BeitBlock
    from timm.models.vision_transformer import Block

    return [m for m in model.modules() if isinstance(m, (Block, BeitBlock))]


def set_fused_attention(model: nn.Module, fused: bool) -> None:
    """SDPA (fused) or plain matmul attention in every timm block of `model` (see
    precision.use_fused_attention for which one a device and precision want)."""
    for block in transformer_blocks(model):
        block.attn.fused_attn = fused


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each block's activations in backward instead of storing them (less memory, ~30% more
    compute). Done by wrapping the instance's forward, so parameter names stay as they are."""
    from torch.utils.checkpoint import checkpoint

    blocks = transformer_blocks(model)
    for block in blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    return len(blocks)


def shard_fsdp(model: nn.Module) -> None:
    """FSDP2: shard every Transformer block, then the rest at the root (in place)."""
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model):
        fully_shard(block)
    fully_shard(model)


def prepare_model(
    model: nn.Module,
    device: torch.device,
    strategy: str = "ddp",
    activation_checkpointing: bool = False,
    compile_model: bool = False,
    find_unused_parameters: bool = False,
) -> Tuple[nn.Module, nn.Module]:
    """(model to save and optimise, module to call in the training step) for the run's settings."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    forward_model = model
    if compile_model:  # before sharding/wrapping, as torch's FSDP2 examples do
        from .compile import compile_blocks

        compile_blocks(transformer_blocks(model))
        for target in getattr(model, "targets", {}).values():  # a teacher lives outside the module tree
            compile_blocks(transformer_blocks(target))
    if is_distributed():
        if strategy == "fsdp":
            shard_fsdp(model)
        else:
            forward_model = wrap_ddp(model, device, find_unused_parameters=find_unused_parameters)
    return model, forward_model


def is_sharded(model: nn.Module) -> bool:
    """True when FSDP2 has turned the parameters into DTensor shards."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(model, optimizer) state with plain tensors and parameter names as keys, the same for a single
    process, DDP and FSDP: gathered on every rank (a collective under FSDP), moved to the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: Dict[str, Any], optimizer_state: Dict[str, Any]
) -> None:
    """Inverse of `full_state_dict` (every rank passes the full state; FSDP keeps its own shard).
    Optimizer states keyed by position (older checkpoints) load with the optimizer's own method."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    if is_sharded(model):
        set_model_state_dict(model, model_state, options=options)
    else:
        load_strict(model, model_state, context="the checkpoint does not fit the model it resumes")
    groups = optimizer_state.get("param_groups") or [{}]
    if all(isinstance(k, int) for k in groups[0].get("params", [])) and not is_sharded(model):
        optimizer.load_state_dict(optimizer_state)
    else:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
