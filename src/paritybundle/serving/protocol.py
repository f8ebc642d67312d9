"""The Open Inference Protocol (KServe V2) REST wire format, and conversion to arrays.

Models quote the spec (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol):

* Inference Request JSON Object: ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``
* Request input: ``{"name", "shape", "datatype", "parameters"?, "data"}``; ``data`` is the
  tensor's elements in row-major order, flat or nested.
* Inference Response JSON Object: ``{"model_name", "model_version"?, "id"?, "outputs": [...]}``
* Error: ``{"error": "..."}``.

Conversion is exact: a float32 sent as JSON arrives bit-identical (JSON numbers are
parsed as doubles and rounded once to the declared dtype; a float32's double value
or its shortest repr both round back to the same float32).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..manifest import TensorSpec

# V2 datatype <-> numpy dtype name (as the manifest spells dtypes).
V2_TO_NUMPY = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "string",
}
NUMPY_TO_V2 = {numpy: v2 for v2, numpy in V2_TO_NUMPY.items()}


class BadRequest(Exception):
    """A client's mistake: answered with a 4xx and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestOutput(_Wire):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Wire):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


def v2_datatype(spec: TensorSpec) -> str:
    return NUMPY_TO_V2[spec.dtype]


def v2_shape(spec: TensorSpec) -> list[int]:
    """Symbolic dimensions are -1 in V2 metadata."""
    return [d if isinstance(d, int) else -1 for d in spec.shape]


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": v2_datatype(spec), "shape": v2_shape(spec)}


def parse_request(payload: Any) -> InferenceRequest:
    """Validate a decoded JSON body as an Inference Request JSON Object."""
    try:
        return InferenceRequest.model_validate(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequest(f"the request is not a V2 inference request: {where}: {err['msg']}.") from None


def input_array(item: RequestInput, spec: TensorSpec, *, max_batch: int) -> np.ndarray:
    """One request input as an array of the spec's dtype; every mismatch is a ``BadRequest``."""
    name = item.name
    expected = v2_datatype(spec)
    if item.datatype != expected:
        raise BadRequest(f"input {name!r} has datatype {item.datatype}, but the model expects {expected}.")
    if any(d < 0 for d in item.shape):
        raise BadRequest(f"input {name!r} has a negative dimension in shape {item.shape}.")
    if len(item.shape) != len(spec.shape):
        raise BadRequest(f"input {name!r} must have {len(spec.shape)} dimensions "
                         f"{v2_shape(spec)}, got shape {item.shape}.")
    for axis, (want, got) in enumerate(zip(spec.shape, item.shape)):
        if isinstance(want, int) and want != got:
            raise BadRequest(f"input {name!r} must have shape {v2_shape(spec)}, got {item.shape} "
                             f"(dimension {axis} is {got}, expected {want}).")
    if item.shape and item.shape[0] > max_batch:
        raise BadRequest(f"input {name!r} has a batch of {item.shape[0]}, over this server's limit of {max_batch}; "
                         "split the request.", status=413)
    count = math.prod(item.shape)
    try:
        if spec.dtype == "string":
            array = np.asarray(item.data, dtype=object).reshape(-1)
            if not all(isinstance(v, str) for v in array):
                raise BadRequest(f"input {name!r} is BYTES and must hold strings.")
        else:
            raw = np.asarray(item.data)
            if raw.dtype.kind == "O" and raw.size and all(isinstance(v, int) for v in raw.reshape(-1)):
                # numpy keeps integers beyond 64 bits as Python objects.
                raise BadRequest(f"input {name!r} has values outside the range of {expected}.")
            if raw.dtype.kind not in "biuf" and raw.size:
                raise BadRequest(f"input {name!r} must hold numbers for {expected}, got {_kind(raw)}.")
            array = _to_dtype(raw.reshape(-1), spec, name)
    except ValueError:
        raise BadRequest(f"input {name!r} has ragged or non-numeric data; send {count} {expected} values "
                         "in row-major order.") from None
    if array.size != count:
        raise BadRequest(f"input {name!r} has {array.size} values, but shape {item.shape} needs {count}.")
    if array.dtype.kind == "f" and not spec.allow_nonfinite and not np.isfinite(array).all():
        raise BadRequest(f"input {name!r} contains NaN or infinity, which this model does not accept.")
    return array.reshape(item.shape)


def _kind(array: np.ndarray) -> str:
    return {"U": "strings", "S": "bytes", "O": "mixed values"}.get(array.dtype.kind, str(array.dtype))


def _to_dtype(raw: np.ndarray, spec: TensorSpec, name: str) -> np.ndarray:
    target = np.dtype(spec.dtype)
    if target.kind == "b":
        if raw.dtype.kind != "b" and raw.size:
            raise BadRequest(f"input {name!r} is BOOL and must hold true/false.")
        return raw.astype(bool)
    if target.kind in "iu":
        if raw.dtype.kind == "b" and raw.size:
            raise BadRequest(f"input {name!r} must hold integers, got true/false.")
        if raw.dtype.kind == "f":
            if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
                raise BadRequest(f"input {name!r} must hold integers for {NUMPY_TO_V2[spec.dtype]}.")
        info = np.iinfo(target)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise BadRequest(f"input {name!r} has values outside the range of {NUMPY_TO_V2[spec.dtype]}.")
        return raw.astype(target)
    if raw.dtype.kind == "b" and raw.size:
        raise BadRequest(f"input {name!r} must hold numbers, got true/false.")
    if raw.dtype == target:
        return raw
    if target.kind == "f" and raw.size:
        # Refuse values the cast would turn into inf, before casting (no overflow warning to silence).
        limit = np.finfo(target).max
        finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
        if finite.size and float(np.abs(finite).max()) > limit:
            raise BadRequest(f"input {name!r} has values too large for {NUMPY_TO_V2[spec.dtype]}.")
    return raw.astype(target)


def output_json(name: str, array: np.ndarray, spec: TensorSpec) -> dict[str, Any]:
    """One output as a V2 response output object (flat row-major data)."""
    data = array.reshape(-1)
    values = [str(v) for v in data] if spec.dtype == "string" else data.tolist()
    return {"name": name, "datatype": v2_datatype(spec), "shape": list(array.shape), "data": values}
