"""Results files as strict JSON: a number that is not finite (a class absent from the data has no IoU, an
undefined mean) is written as null, never as the bare NaN / Infinity that Python's json module emits by
default and strict parsers (JavaScript's JSON.parse, jq, Go, Rust's serde) refuse."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def strict(obj: Any) -> Any:
    """`obj` with every non-finite float (also inside lists, tuples and dicts) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int = 2, **kwargs) -> str:
    """json.dumps of strict(obj), refusing anything non-finite that is left (allow_nan=False)."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False, **kwargs)


def write_json(path, obj: Any, indent: int = 2) -> Path:
    path = Path(path)
    path.write_text(dumps(obj, indent) + "\n")
    return path
