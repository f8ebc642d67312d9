"""The reference inputs as a caller passes them, normalised to named numpy arrays.

Nothing here imports torch: a tensor is recognised by its ``detach``/``cpu`` methods.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
            raise SpecError(
                f"reference input {name!r} holds Python objects (not all strings); pass a numeric array, "
                "a tensor, or strings."
            )
    if array.dtype.kind == "S":
        array = array.astype(str)
    if array.ndim == 0:
        raise SpecError(f"reference input {name!r} is a scalar; it needs a leading batch dimension.")
    return array


def is_tensor_like(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "cpu"))


def is_dataframe(value: Any) -> bool:
    return hasattr(value, "columns") and hasattr(value, "to_dict")


def raw_groups(spec: Any) -> list[Any]:
    """The caller's reference inputs as a list of groups (one unless they passed a list of groups).

    A list whose items are all arrays, tensors, mappings, tuples or DataFrames is a list of groups,
    each with its own non-batch shape (sequence lengths, image sizes); a list of numbers is one array.
    """
    raw = spec.reference_inputs
    if raw is None:
        raise SpecError("reference_inputs is required: the raw inputs the research outputs are computed on.")
    if (
        isinstance(raw, list)
        and raw
        and all(is_tensor_like(g) or isinstance(g, (Mapping, tuple)) or is_dataframe(g) for g in raw)
    ):
        return list(raw)
    if isinstance(raw, list) and not raw:
        raise SpecError("reference_inputs is an empty list; pass at least one group of inputs.")
    return [raw]


def normalise_group(
    raw: Any, names: Sequence[str] | None, input_names: Sequence[str] | None, label: str = "reference_inputs"
) -> dict[str, np.ndarray]:
    """One group of reference rows as named contiguous arrays.

    ``names`` names a tuple's items (and a lone array); a mapping names its own.
    """
    if is_dataframe(raw):  # a pandas DataFrame: one input per column
        raw = {str(c): raw[c].to_numpy() for c in raw.columns}
    if isinstance(raw, Mapping):
        if input_names is not None and list(input_names) != [str(k) for k in raw]:
            raise SpecError(f"input_names {list(input_names)} differ from the reference input keys {list(raw)}.")
        arrays = {str(k): to_numpy(v, str(k)) for k, v in raw.items()}
    elif isinstance(raw, tuple):
        tuple_names = list(names or input_names or [])
        if len(tuple_names) != len(raw):
            raise SpecError(
                f"{label} is a tuple of {len(raw)} arrays; name them with input_names "
                "(or pass a mapping name -> array)."
            )
        arrays = {name: to_numpy(v, name) for name, v in zip(tuple_names, raw, strict=True)}
    else:
        single = list(names or input_names or ["input"])
        if len(single) != 1:
            raise SpecError(f"{len(single)} input names given but one reference array; pass a mapping name -> array.")
        arrays = {single[0]: to_numpy(raw, single[0])}
    if not arrays:
        raise SpecError(f"{label} is empty; pass at least one input with at least one sample.")
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise SpecError(f"{label}: the reference inputs disagree on the number of samples: {lengths}.")
    if next(iter(lengths.values())) < 1:
        raise SpecError(f"{label} has no samples; pass at least one.")
    return {name: np.ascontiguousarray(a) for name, a in arrays.items()}


def normalise_inputs(spec: Any, names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """Every reference row the caller passed, group by group, as named contiguous arrays (selection is
    coverage.py's). Groups must hold the same inputs, of the same dtype and rank; only sizes differ.

    Raises:
        SpecError: naming the group and what differs.
    """
    raws = raw_groups(spec)
    groups = [
        normalise_group(raw, names, spec.input_names, f"reference group {k}" if len(raws) > 1 else "reference_inputs")
        for k, raw in enumerate(raws)
    ]
    first = groups[0]
    for k, group in enumerate(groups[1:], start=1):
        if list(group) != list(first):
            raise SpecError(
                f"reference group {k} holds inputs {list(group)}, group 0 holds {list(first)}; "
                "every group needs the same inputs."
            )
        for name, array in group.items():
            if array.dtype.kind != first[name].dtype.kind or (
                array.dtype.kind != "U" and array.dtype != first[name].dtype
            ):
                raise SpecError(
                    f"input {name!r} is {array.dtype} in reference group {k} but {first[name].dtype} in "
                    "group 0; one dtype for every group."
                )
            if array.ndim != first[name].ndim:
                raise SpecError(
                    f"input {name!r} has rank {array.ndim} in reference group {k} but {first[name].ndim} "
                    "in group 0; groups differ in sizes, not in rank."
                )
    return groups


def length(inputs: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0])


def output_names(spec: Any, derived: list[str]) -> list[str]:
    """The outputs' names: ``spec.output_names`` when given (one per output), else ``derived`` (from the
    model's result: ``output``, ``output_K``, dict keys and fields such as ``logits``)."""
    if spec.output_names is not None:
        names = [str(n) for n in spec.output_names]
        if len(names) != len(derived):
            raise SpecError(
                f"{len(names)} output names given but the model returns {len(derived)} outputs ({', '.join(derived)})."
            )
        if len(set(names)) != len(names):
            raise SpecError(f"output names must be distinct: {names}.")
        return names
    return derived


def first_paragraph(exc: BaseException, limit: int = 800) -> str:
    text = str(exc).strip()
    paragraph = text.split("\n\n", 1)[0]
    paragraph = " ".join(paragraph.split())
    return paragraph if len(paragraph) <= limit else paragraph[:limit] + " ..."
