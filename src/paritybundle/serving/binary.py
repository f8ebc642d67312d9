"""The binary tensor data extension of the V2 protocol (KServe; Triton's ``binary_tensor_data``).

The spec (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol/binary-tensor-data-extension):

* A request whose body is a JSON header followed by tensor bytes says where the JSON ends with
  the ``Inference-Header-Content-Length`` header; the answer does the same.
* An input sent as bytes carries ``"parameters": {"binary_data_size": N}`` and no ``data``; the
  bytes of such inputs follow the JSON in the order the inputs are listed.
* Tensor bytes are little-endian, row-major, no padding; BOOL one byte (0 or 1) per element; BYTES
  elements each a 4-byte little-endian unsigned length followed by that many bytes.
* An output is answered as bytes when its ``$request_output`` has ``"binary_data": true``, or when
  the request's ``"binary_data_output"`` parameter is true and the output does not say otherwise
  (tritonclient sets it when it names no outputs). Its ``$response_output`` then carries
  ``binary_data_size`` and no ``data``.

Strings in bundles are Unicode text: BYTES elements must be UTF-8, and are answered as UTF-8.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .wire import BadRequest, RequestInput

HEADER_LENGTH = "inference-header-content-length"
BINARY_SIZE = "binary_data_size"


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """``(json header, tensor bytes)`` of a request body; without the header, all of it is JSON."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest("the Inference-Header-Content-Length header is not a number.") from None
    if not 0 < length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length is {length}, but the body has {len(body)} bytes; "
            "it must give the length of the JSON part."
        )
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def binary_size(item: RequestInput | Any) -> int | None:
    """The ``binary_data_size`` an input or output declares (None: sent as JSON)."""
    parameters = item.parameters
    if not parameters or BINARY_SIZE not in parameters:
        return None
    size = parameters[BINARY_SIZE]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"{item.name!r}: binary_data_size must be a non-negative integer, got {size!r}.")
    return size


def payloads(items: Sequence[RequestInput], tensor_bytes: memoryview) -> dict[str, memoryview]:
    """Each binary input's bytes, cut from ``tensor_bytes`` in the order the inputs are listed.

    Raises:
        BadRequest: sizes that do not add up to the bytes after the JSON, or an input with both
            ``data`` and ``binary_data_size``, or with neither.
    """
    cut: dict[str, memoryview] = {}
    offset = 0
    for item in items:
        size = binary_size(item)
        if size is None:
            if item.data is None:
                raise BadRequest(f"input {item.name!r} has neither data nor a binary_data_size parameter.")
            continue
        if item.data is not None:
            raise BadRequest(f"input {item.name!r} has both data and binary_data_size; send one of them.")
        if offset + size > len(tensor_bytes):
            raise BadRequest(
                f"input {item.name!r} declares {size} bytes of binary data, but only "
                f"{len(tensor_bytes) - offset} follow the JSON."
            )
        cut[item.name] = tensor_bytes[offset : offset + size]
        offset += size
    if offset != len(tensor_bytes):
        raise BadRequest(
            f"{len(tensor_bytes) - offset} bytes follow the JSON and the binary inputs; "
            "binary_data_size must account for every byte after Inference-Header-Content-Length."
        )
    return cut


def decode_bytes(name: str, data: memoryview, dtype: str, count: int) -> np.ndarray:
    """One input's tensor bytes as a flat array of ``count`` elements of ``dtype`` (native order).

    Raises:
        BadRequest: a size that does not match ``count`` elements, a BOOL byte other than 0/1,
            a BYTES element that overruns the data or is not UTF-8.
    """
    if dtype == "string":
        return _decode_strings(name, data, count)
    wire = np.dtype(dtype).newbyteorder("<")
    if len(data) != count * wire.itemsize:
        raise BadRequest(
            f"input {name!r} has {len(data)} bytes of binary data, but its shape needs "
            f"{count} x {wire.itemsize} = {count * wire.itemsize}."
        )
    if dtype == "bool":
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise BadRequest(f"input {name!r} is BOOL; each byte must be 0 or 1.")
        return raw.astype(bool)
    return np.frombuffer(data, dtype=wire).astype(np.dtype(dtype), copy=not wire.isnative)


_LENGTH = struct.Struct("<I")


def _decode_strings(name: str, data: memoryview, count: int) -> np.ndarray:
    values: list[str] = []
    offset, raw = 0, bytes(data)
    for _ in range(count):
        if offset + 4 > len(raw):
            raise BadRequest(f"input {name!r}: the BYTES data ends before element {len(values)} of {count}.")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(
                f"input {name!r}: BYTES element {len(values)} declares {length} bytes, past the end of the data."
            )
        try:
            values.append(raw[offset : offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(
                f"input {name!r}: BYTES element {len(values)} is not UTF-8 text; this model's strings are text."
            ) from None
        offset += length
    if offset != len(raw):
        raise BadRequest(f"input {name!r}: {len(raw) - offset} bytes follow its {count} BYTES elements.")
    return np.array(values, dtype=object)


def encode(array: np.ndarray, dtype: str) -> bytes:
    """An output's tensor bytes: little-endian, row-major; BYTES length-prefixed UTF-8."""
    if dtype == "string":
        parts = []
        for value in array.reshape(-1):
            encoded = str(value).encode("utf-8")
            parts.append(_LENGTH.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    # BOOL is one byte each, 0 or 1: numpy's bool is exactly that (any non-zero value becomes 1).
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def wants_binary(request_parameters: dict[str, Any] | None, output_parameters: dict[str, Any] | None) -> bool:
    """Whether one output is answered as bytes: its own ``binary_data`` when it has one, else the
    request's ``binary_data_output`` (which speaks for every output)."""
    if output_parameters and "binary_data" in output_parameters:
        return _flag(output_parameters["binary_data"], "binary_data")
    if request_parameters and "binary_data_output" in request_parameters:
        return _flag(request_parameters["binary_data_output"], "binary_data_output")
    return False


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"the {name} parameter must be true or false, got {value!r}.")
    return value
