"""A small builder for ONNX graphs made with onnx's own helpers.

Preprocessing is built node by node rather than traced from torch: torch cannot
export strings, and a hand-built graph holds exactly the fitted constants, named
after the step and column they belong to, so ``bundle diff`` and a reader of the
graph can find them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

# ai.onnx.ml opset 3 has LabelEncoder v2 (string keys -> int64 values), which every
# onnxruntime paritybundle supports runs.
ML_OPSET = 3
# Resize's antialias attribute needs opset 18.
MIN_OPSET = 18


class GraphBuilder:
    """Collects nodes and initializers; every name it hands out is unique in the graph."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: Counter[str] = Counter()

    def name(self, hint: str) -> str:
        clean = "".join(c if c.isalnum() or c in "._/-" else "_" for c in hint) or "t"
        self._used[clean] += 1
        count = self._used[clean]
        return clean if count == 1 else f"{clean}_{count}"

    def constant(self, value: Any, hint: str, dtype: Any = np.float32) -> str:
        """An initializer holding ``value`` (a fitted statistic, an index list, ...)."""
        from onnx import numpy_helper

        name = self.name(hint)
        array = np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, *, domain: str = "", **attributes: Any) -> str:
        """Append one node with a single output; returns that output's name."""
        from onnx import helper

        output = self.name(hint)
        self.nodes.append(
            helper.make_node(op, inputs, [output], name=self.name(f"{hint}/{op}"), domain=domain, **attributes)
        )
        return output

    def identity(self, source: str, name: str) -> str:
        """Give ``source`` the graph-level name ``name`` (graph outputs are named by the caller)."""
        from onnx import helper

        self.nodes.append(helper.make_node("Identity", [source], [name], name=self.name(f"{name}/Identity")))
        return name


def value_info(name: str, dtype: np.dtype, shape: list[int | str]) -> Any:
    """An ONNX graph input/output declaration for a numpy dtype and a shape."""
    from onnx import TensorProto, helper

    elem = TensorProto.STRING if dtype.kind in "USO" else helper.np_dtype_to_tensor_dtype(dtype)
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(builder: GraphBuilder, inputs: list[Any], outputs: list[Any], opset: int, graph_name: str) -> Any:
    """A checked ONNX model of the builder's nodes, importing the default and ai.onnx.ml domains."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(builder.nodes, graph_name, inputs, outputs, builder.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", max(opset, MIN_OPSET)), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="paritybundle",
    )
    model.ir_version = min(model.ir_version, 10)  # readable by every onnxruntime we support
    onnx.checker.check_model(model, full_check=True)
    return model
