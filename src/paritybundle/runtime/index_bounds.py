"""Where a graph says which integer inputs index a table: the valid range of those inputs.

An integer input that reaches a ``Gather``'s indices (directly, or through shape-only ops and
casts) selects rows of its data; when that data is a constant of known size ``V`` along the
gathered axis, every value must lie in ``[0, V - 1]``. ONNX Runtime fails the whole call on one
value past ``V - 1``: in a server that would fail every request batched with the bad one, so such
values are refused per request before batching (a 400 naming the input). ONNX's ``Gather`` reads a
negative index from the table's end (-1 is row V-1), where research's lookup (torch's ``Embedding``)
raises on it: serving it would answer what research never could, so negative ids are refused too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Ops that pass index values through unchanged (shape changes only, or an integer cast).
_PASS_THROUGH = {"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Transpose"}


def index_bounds(model: Any, integer_inputs: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Input name -> inclusive ``(low, high)`` for integer graph inputs that index a constant table.

    Args:
        model: the ``ModelProto`` (weights need not be loaded: only initializer shapes are read).
        integer_inputs: the names of the graph's integer inputs.
    """
    wanted = set(integer_inputs)
    if not wanted:
        return {}
    graph = model.graph
    sizes: dict[str, list[int]] = {init.name: list(init.dims) for init in graph.initializer}
    producer: dict[str, Any] = {}
    for node in graph.node:
        for output in node.output:
            producer[output] = node
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None:
                sizes[node.output[0]] = list(value.dims)
    bounds: dict[str, tuple[int, int]] = {}
    for node in graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        shape = sizes.get(node.input[0])
        source = _graph_input(node.input[1], producer, wanted)
        if shape is None or source is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if not -len(shape) <= axis < len(shape) or shape[axis] <= 0:
            continue
        size = shape[axis]
        low, high = bounds.get(source, (0, size - 1))
        bounds[source] = (max(low, 0), min(high, size - 1))
    return bounds


def _graph_input(name: str, producer: Mapping[str, Any], inputs: set[str]) -> str | None:
    """The graph input ``name`` comes from through pass-through ops, or None."""
    for _ in range(64):  # a chain longer than this is not an index path worth following
        if name in inputs:
            return name
        node = producer.get(name)
        if node is None or node.op_type not in _PASS_THROUGH or not node.input:
            return None
        if node.op_type == "Cast" and not _integer_cast(node):
            return None
        name = node.input[0]
    return None


def _integer_cast(node: Any) -> bool:
    to = next((a.i for a in node.attribute if a.name == "to"), None)
    return to in (2, 3, 4, 5, 6, 7, 12, 13)  # the ONNX integer element types
