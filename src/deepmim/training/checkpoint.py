"""The training state a checkpoint carries for a bit-exact resume: the RNG states.

The checkpoint file itself (its keys, file names, atomic writes, reading) is deepmim.checkpoint's;
`atomic_save`, `find_resume_checkpoint` and `LAST` are imported from there (and so stay importable
from here, where they used to live).
"""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

from ..checkpoint import LAST, atomic_save, find_resume_checkpoint

__all__ = ["LAST", "atomic_save", "find_resume_checkpoint", "rng_state", "set_rng_state"]


def rng_state() -> Dict[str, Any]:
    """RNG states as tensors and plain types, so weights_only loading accepts them."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
