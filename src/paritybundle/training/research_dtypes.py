"""Reference arrays in the dtypes the served graph reads and answers, or a refusal at export.

The check reads each reference array in the dtype the manifest declares for it (the graph's). Research
often computes in another: scikit-learn's ``predict_proba`` in float64 beside a float32 ONNX graph, a
float16 torch model whose outputs arrive as float32, labels as int32 beside an int64 graph, float32
reference rows for a graph that reads float64. Stored as research made them, such a bundle exported
with exit 0 and then failed its own check (exit 3, "re-export the bundle", which could not help).

The rule (DESIGN.md, "three rules every source of rows obeys", rule 1): each array is stored in the
graph's dtype, and that is the stated common precision the check compares in, when the conversion
changes no value beyond that dtype's own rounding:

* float -> float: always (float64 research served as float32 is benign; the difference is the
  served dtype's rounding, far below any tolerance made for it);
* integer, bool or whole-number float -> integer or bool (and integer -> float): when every value
  survives the round trip exactly;
* text -> string: when every value is text.

Anything else (float research for an integer or bool output, numbers for a string one) is refused
with one sentence saying what to pass instead. Which outputs were converted is recorded in the
manifest (``TensorSpec.research_dtype``) and shown by ``bundle inspect``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..bundle.manifest import TensorSpec
from ..errors import SpecError


def in_graph_dtypes(
    groups: Sequence[Mapping[str, np.ndarray]], specs: Sequence[TensorSpec], what: str
) -> tuple[list[dict[str, np.ndarray]], dict[str, str]]:
    """``groups`` (per reference group: name -> array) with each array in its spec's dtype.

    Args:
        what: ``"reference input"`` or ``"research output"``, for the refusal's sentence.

    Returns:
        The converted groups, and name -> the dtype the caller's arrays had, for each converted one.

    Raises:
        SpecError: a conversion that would change values (named, with what to do).
    """
    by_name = {s.name: s for s in specs}
    converted: dict[str, str] = {}
    result = []
    for group in groups:
        arrays = {}
        for name, array in group.items():
            spec = by_name.get(name)
            if spec is None:
                arrays[name] = array
                continue
            arrays[name] = _converted(array, spec, what)
            if _dtype_name(array) != spec.dtype:  # numpy's str and object arrays are both text: no change
                converted[name] = _dtype_name(array)
        result.append(arrays)
    return result, converted


def _dtype_name(array: np.ndarray) -> str:
    return "string" if array.dtype.kind in "OUS" else array.dtype.name


def _converted(array: np.ndarray, spec: TensorSpec, what: str) -> np.ndarray:
    source = array.dtype
    if spec.dtype == "string":
        if source.kind in "US":
            return array.astype(object)
        if source.kind == "O" and all(isinstance(v, str) for v in array.reshape(-1)):
            return array
        raise SpecError(
            f"{what} {spec.name!r} holds {source} values, but the graph's {spec.name!r} is text; pass "
            "the research values as strings."
        )
    target = np.dtype(spec.dtype)
    if source == target:
        return array
    if source.kind == "f" and target.kind == "f":
        return np.ascontiguousarray(array.astype(target))
    if source.kind in "biuf" and target.kind in "biuf":
        with np.errstate(invalid="ignore", over="ignore"):
            cast = array.astype(target)
            exact = np.array_equal(cast.astype(source), array)
        if exact:  # whole numbers as floats (some frameworks' predict()) included
            return np.ascontiguousarray(cast)
        if source.kind == "f":
            raise SpecError(
                f"{what} {spec.name!r} holds {source} values, but the graph's {spec.name!r} is {target}: "
                "pass what research decided for it (e.g. scikit-learn's predict(), not predict_proba()), "
                f"as {target}."
            )
        raise SpecError(
            f"{what} {spec.name!r} holds {source} values that {target} cannot hold exactly (the graph's "
            f"dtype); pass values within {target}'s range."
        )
    raise SpecError(
        f"{what} {spec.name!r} holds {source} values, but the graph's {spec.name!r} is {spec.dtype}; "
        f"convert them to {spec.dtype}, or name the output research computed."
    )


def with_research_dtypes(specs: list[TensorSpec], converted: Mapping[str, str]) -> list[TensorSpec]:
    """Specs with the dtype research's arrays had recorded where they were converted."""
    return [s.model_copy(update={"research_dtype": converted[s.name]}) if s.name in converted else s for s in specs]
