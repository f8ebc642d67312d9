"""What a bundle's preprocessing was fitted on, read from ``manifest.preprocessing`` (no graph run).

Export's coverage rules (which probes to add) and ``bundle drift`` (what production's inputs leave)
read the same two facts of a raw input's column: its vocabulary, and the range it was fitted to in
the raw input's own units.
"""

from __future__ import annotations

from .manifest import PreprocessColumn

# Steps that keep a value in its raw units (so a bound after them is a bound on the raw input).
_RAW_UNIT_STEPS = {"impute", "clip"}


def fitted_bounds(column: PreprocessColumn) -> tuple[list[float], list[float]] | None:
    """Per feature ``(lower, upper)`` the preprocessing was fitted to, in the raw input's units:
    a Clip's bounds or a MinMaxScale's range, while no earlier step changed the units."""
    for step in column.steps:
        if step.kind == "clip" and step.params.get("lower") is not None and step.params.get("upper") is not None:
            return list(step.params["lower"]), list(step.params["upper"])
        if step.kind == "min_max_scale":
            return list(step.params["min"]), list(step.params["max"])
        if step.kind not in _RAW_UNIT_STEPS:
            return None
    return None


def vocabulary(column: PreprocessColumn) -> list[str] | None:
    """The categories a column's index or one-hot step was fitted on."""
    for step in column.steps:
        if step.kind in ("index", "one_hot"):
            return list(step.params.get("vocabulary", []))
    return None
