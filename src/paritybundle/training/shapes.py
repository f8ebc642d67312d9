"""Which axes of the model's inputs may vary when serving: the batch, and ``dynamic_axes``.

Reference groups of different shapes must differ only along declared axes (the exported graph
fixes every other one), and a declared axis exercised at one size only is worth a warning: the
check then proves the graph at that size alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SpecError

log = logging.getLogger("paritybundle.export")


def varying_axes(groups: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict[int, list[int]]]:
    """Per input, the non-batch axes whose size differs between groups, with the sizes seen."""
    varying: dict[str, dict[int, list[int]]] = {}
    for name, array in groups[0].items():
        for axis in range(1, array.ndim):
            sizes = sorted({int(g[name].shape[axis]) for g in groups})
            if len(sizes) > 1:
                varying.setdefault(name, {})[axis] = sizes
    return varying


def dynamic_axes(spec: Any, groups: list[dict[str, np.ndarray]]) -> dict[str, dict[int, str]]:
    """``spec.dynamic_axes`` checked against the model's inputs and the reference groups.

    Raises:
        SpecError: an unknown input, an axis out of range, a name that is not an identifier, or groups
            whose sizes differ along an axis that is not dynamic.
    """
    declared = spec.dynamic_axes or {}
    if not isinstance(declared, Mapping):
        raise SpecError("dynamic_axes must be a mapping {input_name: {axis_index: axis_name}}.")
    first = groups[0]
    axes: dict[str, dict[int, str]] = {}
    for name, by_axis in declared.items():
        if name not in first:
            raise SpecError(f"dynamic_axes names {name!r}, but the model's inputs are {', '.join(first)}.")
        if isinstance(by_axis, (list, tuple)):  # torch.onnx.export also takes a list of axes
            by_axis = {int(axis): f"{name}_dim_{axis}" for axis in by_axis}
        if not isinstance(by_axis, Mapping):
            raise SpecError(f"dynamic_axes[{name!r}] must map axis indices to names, e.g. {{1: 'seq'}}.")
        rank = first[name].ndim
        for axis, dim in by_axis.items():
            if not isinstance(axis, int) or not 0 <= axis < rank:
                raise SpecError(
                    f"dynamic_axes[{name!r}] names axis {axis!r}, but {name!r} has rank {rank} (axes 0 to {rank - 1})."
                )
            if not isinstance(dim, str) or not dim.isidentifier():
                raise SpecError(
                    f"dynamic_axes[{name!r}][{axis}] is {dim!r}; name each axis with an identifier "
                    "(letters, digits, _), e.g. 'seq'."
                )
        axes[name] = {int(axis): str(dim) for axis, dim in by_axis.items()}
    for name, sizes in varying_axes(groups).items():
        for axis, seen in sizes.items():
            if axis not in axes.get(name, {}):
                raise SpecError(
                    f"the reference groups differ along axis {axis} of {name!r} ({seen}), which is not "
                    f"dynamic; declare it: dynamic_axes={{{name!r}: {{{axis}: 'name'}}}}."
                )
    for name, by_axis in axes.items():
        for axis, dim in by_axis.items():
            seen_sizes = sorted({int(g[name].shape[axis]) for g in groups})
            if axis > 0 and len(seen_sizes) == 1:
                log.warning(
                    "%s: dynamic axis %r (axis %d of %r) is exercised at one size only (%d); pass reference "
                    "groups of other sizes too, so the check proves the exported graph at more than one.",
                    spec.name,
                    dim,
                    axis,
                    name,
                    seen_sizes[0],
                )
    return axes
