"""Decoding V2 request data into arrays of the declared dtype.

Conversion is exact: a float32 sent as JSON arrives bit-identical (JSON numbers are
parsed as doubles and rounded once to the declared dtype; a float32's double value
or its shortest repr both round back to the same float32). Decoding checks only what
the wire can get wrong (the datatype, the element count, values that do not fit the
dtype); every rule of the bundle's specs (names, ranks, fixed dimensions, NaN) is
:mod:`paritybundle.runtime.validation`'s, applied to the decoded arrays.
"""

from __future__ import annotations

import array
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..bundle.manifest import TensorSpec
from ..errors import InputValidationError
from ..runtime.validation import check_shape, conform
from .binary import decode_bytes
from .wire import NUMPY_TO_V2, BadRequest, RequestInput, v2_datatype

# A value too large for the declared dtype is caught from the cast's result (it became inf) and
# answered 400; numpy's warning about the same overflow would only repeat it into the server log.
# Filtered for this module alone: np.errstate around every cast cost ~0.8 us of a ~90 us request.
warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning, module=__name__)


class InputDecoder:
    """A model's request inputs -> validated arrays; made once per server (its specs never change)."""

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        *,
        model: str,
        max_batch: int,
        bounds: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self.specs, self.model, self.max_batch = list(specs), model, max_batch
        self.by_name = {s.name: s for s in self.specs}
        self.bounds = dict(bounds or {})

    def __call__(
        self, items: Sequence[RequestInput], binary: Mapping[str, memoryview] | None = None
    ) -> dict[str, np.ndarray]:
        """Every mismatch is a ``BadRequest`` naming the input. ``binary``: the bytes of inputs sent
        with the binary tensor data extension (:func:`.binary.payloads`)."""
        by_name = self.by_name
        arrays: dict[str, np.ndarray] = {}
        for item in items:
            spec = by_name.get(item.name)
            if spec is None:
                raise BadRequest(f"input {item.name!r} is not an input of {self.model}; it takes {', '.join(by_name)}.")
            if item.name in arrays:
                raise BadRequest(f"input {item.name!r} is given twice.")
            arrays[item.name] = decode(
                item, spec, max_batch=self.max_batch, payload=binary.get(item.name) if binary else None
            )
        if len(arrays) != len(self.specs):
            missing = next(s.name for s in self.specs if s.name not in arrays)
            raise BadRequest(f"input {missing!r} is missing; {self.model} takes {', '.join(by_name)}.")
        bound: dict[str, int] = {}  # symbolic dimensions shared between inputs
        try:
            return {
                spec.name: conform(spec, arrays[spec.name], bound, limits=self.bounds.get(spec.name))
                for spec in self.specs
            }
        except InputValidationError as exc:
            raise BadRequest(str(exc)) from None


def input_array(item: RequestInput, spec: TensorSpec, *, max_batch: int) -> np.ndarray:
    """One request input decoded and held to its spec (for a single input; see :class:`InputDecoder`)."""
    try:
        return conform(spec, decode(item, spec, max_batch=max_batch))
    except InputValidationError as exc:
        raise BadRequest(str(exc)) from None


def decode(item: RequestInput, spec: TensorSpec, *, max_batch: int, payload: memoryview | None = None) -> np.ndarray:
    """One request input as an array of the spec's dtype, shaped as sent (from ``payload``, its tensor
    bytes, when it was sent as binary data); a wire problem is a ``BadRequest``."""
    name = item.name
    expected = v2_datatype(spec)
    if item.datatype != expected:
        raise BadRequest(f"input {name!r} has datatype {item.datatype}, but the model expects {expected}.")
    if any(d < 0 for d in item.shape):
        raise BadRequest(f"input {name!r} has a negative dimension in shape {item.shape}.")
    if item.shape and item.shape[0] > max_batch:
        raise BadRequest(
            f"input {name!r} has a batch of {item.shape[0]}, over this server's limit of {max_batch}; "
            "split the request.",
            status=413,
        )
    try:  # rank and fixed dimensions first: a tensor of the wrong shape is refused before it is decoded
        check_shape(spec, item.shape)
    except InputValidationError as exc:
        raise BadRequest(str(exc)) from None
    count = math.prod(item.shape)
    if payload is not None:
        return decode_bytes(name, payload, spec.dtype, count).reshape(item.shape)
    if item.data is None:
        raise BadRequest(f"input {name!r} has no data.")
    fast = _flat_numbers(item.data, spec)  # pragma: no mutate (None takes the general path to the same array)
    if fast is not None:
        if fast.size != count:
            raise BadRequest(f"input {name!r} has {fast.size} values, but shape {item.shape} needs {count}.")
        return _to_dtype(fast, spec, name).reshape(item.shape)
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
        raise BadRequest(
            f"input {name!r} has ragged or non-numeric data; send {count} {expected} values in row-major order."
        ) from None
    if array.size != count:
        raise BadRequest(f"input {name!r} has {array.size} values, but shape {item.shape} needs {count}.")
    return array.reshape(item.shape)


# Flat JSON numbers straight into a typed buffer (array.array refuses strings, None and nested lists
# with TypeError): 30% less than np.asarray's dtype discovery on 4096 floats. Anything else, and
# lists starting with true/false, take the general path, which explains what is wrong.
_BUFFER_CODES = {"f": "d", "i": "q", "u": "Q"}


def _flat_numbers(data: list[Any], spec: TensorSpec) -> np.ndarray | None:
    if spec.dtype in ("string", "bool") or not data or isinstance(data[0], (bool, list)):
        return None
    code = _BUFFER_CODES[np.dtype(spec.dtype).kind]
    try:
        return np.frombuffer(array.array(code, data), dtype=np.dtype(code))
    except (TypeError, OverflowError):
        return None


def _kind(array: np.ndarray) -> str:
    # JSON gives only these two: strings, or values of several kinds (objects, nulls, numbers with text).
    return "strings" if array.dtype.kind == "U" else "mixed values"


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
    cast = raw.astype(target)
    # A value the cast turned into inf was too large for the dtype (one pass over the cast values in
    # the common case; the source is only looked at when something is not finite).
    if target.kind == "f" and cast.size and not np.isfinite(cast).all() and (np.isinf(cast) & np.isfinite(raw)).any():
        raise BadRequest(f"input {name!r} has values too large for {NUMPY_TO_V2[spec.dtype]}.")
    return cast
