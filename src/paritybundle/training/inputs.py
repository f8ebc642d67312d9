"""The reference inputs as a caller passes them, normalised to named numpy arrays.

Nothing here imports torch: a tensor is recognised by its ``detach``/``cpu`` methods.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import SpecError

log = logging.getLogger("paritybundle.export")


def to_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception:
        raise SpecError(f"reference input {name!r} cannot be converted to an array.") from None
    if array.dtype.kind == "O":
        if array.size and all(isinstance(v, str) for v in array.ravel()):
            array = array.astype(str)  # category strings (e.g. from pandas) as a unicode array
        else:
            raise SpecError(f"reference input {name!r} holds Python objects (not all strings); pass a numeric array, "
                            "a tensor, or strings.")
    if array.dtype.kind == "S":
        array = array.astype(str)
    if array.ndim == 0:
        raise SpecError(f"reference input {name!r} is a scalar; it needs a leading batch dimension.")
    return array


def normalise_inputs(spec: Any) -> dict[str, np.ndarray]:
    """Every reference row the caller passed, as named contiguous arrays (selection is coverage.py's)."""
    raw = spec.reference_inputs
    if raw is None:
        raise SpecError("reference_inputs is required: the raw inputs the research outputs are computed on.")
    if hasattr(raw, "columns") and hasattr(raw, "to_dict"):  # a pandas DataFrame: one input per column
        raw = {str(c): raw[c].to_numpy() for c in raw.columns}
    if isinstance(raw, Mapping):
        if spec.input_names is not None and list(spec.input_names) != list(raw):
            raise SpecError(f"input_names {list(spec.input_names)} differ from the reference input keys {list(raw)}.")
        arrays = {str(k): to_numpy(v, str(k)) for k, v in raw.items()}
    else:
        names = list(spec.input_names or ["input"])
        if len(names) != 1:
            raise SpecError(f"{len(names)} input names given but one reference array; pass a mapping name -> array.")
        arrays = {names[0]: to_numpy(raw, names[0])}
    if not arrays:
        raise SpecError("reference_inputs is empty; pass at least one input with at least one sample.")
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise SpecError(f"reference inputs disagree on the number of samples: {lengths}.")
    count = next(iter(lengths.values()))
    if count < 1:
        raise SpecError("reference_inputs has no samples; pass at least one.")
    return {name: np.ascontiguousarray(a) for name, a in arrays.items()}


def length(inputs: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0])


def output_names(spec: Any, count: int) -> list[str]:
    if spec.output_names is not None:
        names = list(spec.output_names)
        if len(names) != count:
            raise SpecError(f"{len(names)} output names given but the model returns {count} outputs.")
        if len(set(names)) != len(names):
            raise SpecError(f"output names must be distinct: {names}.")
        return names
    return ["output"] if count == 1 else [f"output_{k}" for k in range(count)]


def first_paragraph(exc: BaseException, limit: int = 800) -> str:
    text = str(exc).strip()
    paragraph = text.split("\n\n", 1)[0]
    paragraph = " ".join(paragraph.split())
    return paragraph if len(paragraph) <= limit else paragraph[:limit] + " ..."
