"""Fitted state as JSON for the manifest: numbers and strings, lists of them, or a shape summary."""

from __future__ import annotations

from typing import Any

import numpy as np

# Fitted attributes larger than this many values are summarised by their shape.
_MAX_DESCRIBED_VALUES = 4096


def json_value(value: Any) -> Any:
    """A fitted attribute as JSON: numbers and strings, lists of them, or a shape summary."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)) and len(value) <= 256:
        items = [json_value(v) for v in value]
        return items if all(i is not ... for i in items) else ...
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufUSO":
        if value.size > _MAX_DESCRIBED_VALUES:
            return {"shape": list(value.shape), "dtype": str(value.dtype)}
        if value.dtype.kind == "O":
            return [str(v) for v in value.ravel()]
        return value.tolist()
    return ...
