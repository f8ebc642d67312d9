"""Input and output specs read from an exported ONNX graph (names, dtypes, symbolic dims)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..bundle.manifest import OutputKind, TensorDType, TensorSpec
from ..errors import ExportError, SpecError
from ..runtime.session import numpy_dtype_of_onnx
from .coverage import is_score_like


def input_specs(model: Any, label: str, arrays: Mapping[str, np.ndarray], replaces_nan: Any = None) -> list[TensorSpec]:
    """The graph inputs of ``model`` (a loaded ModelProto, called ``label``) as specs, in the graph's
    order, named like ``arrays``.

    An input whose arrays hold NaN/inf, or whose preprocessing replaces NaN, accepts them when serving.
    """
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if sorted(i.name for i in graph_inputs) != sorted(arrays):
        raise ExportError(f"the graph {label} reads {[i.name for i in graph_inputs]}, not {list(arrays)}.")
    specs = []
    for value in graph_inputs:
        spec = tensor_spec(value)
        array = arrays[spec.name]
        nonfinite = array.dtype.kind == "f" and not np.isfinite(array).all()
        handled = bool(replaces_nan and replaces_nan(spec.name))
        specs.append(spec.model_copy(update={"allow_nonfinite": bool(nonfinite or handled)}))
    return specs


def tensor_spec(value: Any, kind: OutputKind = "values") -> TensorSpec:
    tensor_type = value.type.tensor_type
    shape: list[int | str] = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        else:
            shape.append(dim.dim_param or f"dim_{axis}")
    dtype = cast(TensorDType, numpy_dtype_of_onnx(tensor_type.elem_type))  # TensorSpec validates it
    return TensorSpec(name=value.name, dtype=dtype, shape=shape, kind=kind)


def graph_specs(
    model_path: Path,
    spec_inputs: Mapping[str, np.ndarray],
    output_names: list[str],
    spec: Any,
    research: Mapping[str, np.ndarray],
) -> tuple[list[TensorSpec], list[TensorSpec], int]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if graph_inputs != list(spec_inputs):
        raise ExportError(f"the exported graph's inputs {graph_inputs} differ from {list(spec_inputs)}.")
    by_name = {o.name: o for o in model.graph.output}
    missing = [n for n in output_names if n not in by_name]
    if missing:
        raise ExportError(f"the exported graph has no output {missing[0]!r} (it has {list(by_name)}).")
    inputs = input_specs(model, model_path.name, spec_inputs)
    outputs = [tensor_spec(by_name[n]) for n in output_names]
    if spec.score_outputs is not None:
        unknown = set(spec.score_outputs) - set(output_names)
        if unknown:
            raise SpecError(f"score_outputs names {sorted(unknown)}, but the outputs are {', '.join(output_names)}.")
        scores = set(spec.score_outputs)
    else:
        scores = {o.name for o in outputs if looks_like_scores(o, research[o.name])}
    outputs = [o.model_copy(update={"kind": "scores" if o.name in scores else "values"}) for o in outputs]
    return inputs, outputs, int(opset)


def looks_like_scores(spec: TensorSpec, research: np.ndarray) -> bool:
    """Floats over classes, checked for argmax agreement too (the rule: :func:`.coverage.is_score_like`)."""
    return spec.dtype.startswith("float") and is_score_like(spec.name, research)


def batch_first(outputs: list[TensorSpec], research: Sequence[Mapping[str, np.ndarray]]) -> list[TensorSpec]:
    """Outputs whose graph declares a fixed first dimension that research's rows do not have (onnxmltools
    declares a label ``[1]``) get a symbolic batch axis: every output's first axis is the batch here, and
    ONNX Runtime answers one row per sample whatever the annotation says (export's validation proves it)."""
    fixed = []
    for spec in outputs:
        rows = {int(group[spec.name].shape[0]) for group in research if group[spec.name].ndim}
        if spec.shape and isinstance(spec.shape[0], int) and rows and rows != {spec.shape[0]}:
            spec = spec.model_copy(update={"shape": ["batch", *spec.shape[1:]]})
        fixed.append(spec)
    return fixed
