"""ONNX Runtime sessions and input validation (the serving side: no torch).

Building a session (:func:`create_session`) is separate from running it
(:class:`Runner`); the parity engine only ever sees the arrays a runner returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleInvalid, InputValidationError, UsageError
from .manifest import TensorSpec

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
DEFAULT_BATCH_SIZE = 1024

_ONNX_ELEM_TO_NUMPY = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
}


def numpy_dtype_of_onnx(elem_type: int) -> str:
    """The numpy dtype name of an ONNX TensorProto element type."""
    try:
        return _ONNX_ELEM_TO_NUMPY[elem_type]
    except KeyError:
        raise UsageError(f"ONNX element type {elem_type} is not supported by paritybundle bundles.") from None


@dataclass(frozen=True)
class SessionSettings:
    """How an ONNX Runtime session is built; every field is recorded in reports."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    graph_optimization_level: str = "all"
    # 0 lets ONNX Runtime choose (one thread per physical core).
    intra_op_num_threads: int = 0
    # ONNX Runtime's idle intra-op threads spin for work by default. paritybundle always has
    # other work right after a run (comparing, answering HTTP), and spinning threads take
    # the cores it needs: on 2 cores, serving went 3.2k -> 7.9k req/s with spinning off, and
    # check under CPU contention 1.13-1.25x -> 0.98-1.01x of a bare loop (no change when the
    # machine is quiet). Numerics do not depend on it.
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise UsageError(
                f"graph optimization level {self.graph_optimization_level!r} is not one of "
                f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}."
            )
        if self.intra_op_num_threads < 0:
            raise UsageError("the intra-op thread count must be 0 (automatic) or positive.")


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def create_session(model_path: Path, settings: SessionSettings, *, label: str | None = None) -> Any:
    """Build an ONNX Runtime session for a verified model file.

    Raises:
        UsageError: an execution provider that this onnxruntime does not have.
        BundleInvalid: ONNX Runtime cannot load the model (its reason included).
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    for provider in settings.providers:
        if provider not in available:
            raise UsageError(
                f"execution provider {provider} is not available in this onnxruntime "
                f"(available: {', '.join(available)}); install the matching onnxruntime build or choose another."
            )
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.graph_optimization_level]
    options.intra_op_num_threads = settings.intra_op_num_threads
    if not settings.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business here
    try:
        return ort.InferenceSession(os.fspath(model_path), sess_options=options, providers=list(settings.providers))
    except Exception as exc:  # ORT raises its own pybind classes; all mean "cannot load this model"
        reason = " ".join(str(exc).split())[:600]
        raise BundleInvalid(
            f"ONNX Runtime cannot load {label or model_path.name}: {reason}; re-export the bundle."
        ) from None


@dataclass
class Runner:
    """Runs a session on validated inputs, in batches along the first axis."""

    session: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    _output_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self._output_names = [o.name for o in self.outputs]

    def validate(self, inputs: Mapping[str, Any] | np.ndarray, *, check_finite: bool = True) -> dict[str, np.ndarray]:
        """Check names, dtypes and shapes against the specs; return arrays in spec dtypes.

        A single array is accepted for a single-input model. Values of the same
        kind are converted (float64 -> float32); a different kind is refused.
        ``check_finite=False`` skips the NaN/inf scan (for hash-verified references,
        whose ``allow_nonfinite`` flags were derived from those very arrays).

        Raises:
            InputValidationError: naming the input and what is wrong.
        """
        if not isinstance(inputs, Mapping):
            if len(self.inputs) != 1:
                names = ", ".join(s.name for s in self.inputs)
                raise InputValidationError(f"this model takes {len(self.inputs)} inputs ({names}); pass a mapping of name to array.")
            inputs = {self.inputs[0].name: inputs}
        expected = [s.name for s in self.inputs]
        missing = [n for n in expected if n not in inputs]
        if missing:
            raise InputValidationError(f"input {missing[0]!r} is missing; the model takes {', '.join(expected)}.")
        unknown = [n for n in inputs if n not in expected]
        if unknown:
            raise InputValidationError(f"input {unknown[0]!r} is not an input of this model; it takes {', '.join(expected)}.")
        bound: dict[str, int] = {}
        arrays: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            arrays[spec.name] = _conform(spec, inputs[spec.name], bound, check_finite)
        return arrays

    def run(self, inputs: Mapping[str, np.ndarray], batch_size: int | None = DEFAULT_BATCH_SIZE) -> dict[str, np.ndarray]:
        """Run validated inputs through the session, ``batch_size`` samples at a time."""
        total = _batch_length(inputs)
        if not batch_size or total <= batch_size:
            return dict(zip(self._output_names, self.session.run(self._output_names, dict(inputs))))
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self._output_names}
        for batch in iter_batches(inputs, batch_size):
            for name, value in zip(self._output_names, self.session.run(self._output_names, batch)):
                parts[name].append(value)
        return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}


def _batch_length(inputs: Mapping[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def iter_batches(inputs: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Slices of every input along the first axis (views, no copies)."""
    total = _batch_length(inputs)
    for start in range(0, total, batch_size):
        yield {name: array[start:start + batch_size] for name, array in inputs.items()}


def _conform(spec: TensorSpec, value: Any, bound: dict[str, int], check_finite: bool = True) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception:
        raise InputValidationError(f"input {spec.name!r} cannot be read as an array.") from None
    if spec.dtype == "string":
        if array.dtype.kind not in "USO":
            raise InputValidationError(f"input {spec.name!r} must hold strings, got {array.dtype}.")
        array = array.astype(object)
    else:
        target = np.dtype(spec.dtype)
        if array.dtype != target:
            if array.dtype.kind in "USO" or not np.can_cast(array.dtype, target, casting="same_kind"):
                raise InputValidationError(
                    f"input {spec.name!r} must be {spec.dtype}, got {array.dtype}; convert it before sending."
                )
            array = array.astype(target)
    if check_finite and array.dtype.kind == "f" and not spec.allow_nonfinite and not np.isfinite(array).all():
        raise InputValidationError(f"input {spec.name!r} contains NaN or infinity, which this model does not accept.")
    if array.ndim != len(spec.shape):
        raise InputValidationError(
            f"input {spec.name!r} must have {len(spec.shape)} dimensions {_shape_text(spec.shape)}, "
            f"got shape {list(array.shape)}."
        )
    for axis, (dim, size) in enumerate(zip(spec.shape, array.shape)):
        if isinstance(dim, int):
            if dim != size:
                raise InputValidationError(
                    f"input {spec.name!r} must have shape {_shape_text(spec.shape)}, got {list(array.shape)} "
                    f"(dimension {axis} is {size}, expected {dim})."
                )
        elif bound.setdefault(dim, size) != size:
            raise InputValidationError(
                f"input {spec.name!r} has {size} along {dim!r}, but another input has {bound[dim]}; "
                "all inputs must agree on it."
            )
    return np.ascontiguousarray(array)


def _shape_text(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
