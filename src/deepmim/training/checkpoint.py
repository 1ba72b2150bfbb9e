"""Atomic checkpoints that hold everything needed to resume bit-exactly."""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

LAST = "checkpoint-last.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash leaves the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def find_resume_checkpoint(output_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """resume=None: start fresh; 'auto': the last checkpoint in output_dir if any; else a path."""
    if not resume:
        return None
    if resume == "auto":
        last = output_dir / LAST
        if last.exists():
            return last
        numbered = sorted(output_dir.glob("checkpoint-epoch*.pt"))
        return numbered[-1] if numbered else None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"train.resume={resume}: no such checkpoint (use train.resume=auto to continue "
                                f"from the newest checkpoint in train.output_dir, or remove the option)")
    return path


def load_training_checkpoint(path: Path) -> Dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
