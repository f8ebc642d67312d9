"""A small Open Inference Protocol (V2) REST client: what `bundle check --url` sends.

Standard library only (http.client): the check side gains no dependency, and a few
hundred requests do not need a connection pool. An endpoint is untrusted like a bundle:
``timeout_s`` is one deadline for every call the client makes, counted from its first (not a
per-read timeout, which a server sending one byte a second never trips, nor a per-call one, which
such a server meets call after call), every answer has a size cap, and every answer is validated
with the V2 response models before it is used.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from pydantic import ValidationError

from ..bundle.manifest import Manifest, TensorSpec
from ..errors import EndpointError, UsageError
from .wire import V2_TO_NUMPY, InferenceResponse, ModelMetadata, v2_datatype

# No answer of a V2 server to check --url's requests (at most 256 reference rows) comes near this.
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024
_CHUNK = 64 * 1024


class V2Client:
    def __init__(self, url: str, *, timeout_s: float = 30.0, max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES) -> None:
        if not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) or timeout_s <= 0:
            raise UsageError(f"the timeout must be a positive number of seconds, not {timeout_s!r}.")
        if not url.startswith(("http://", "https://")):
            raise EndpointError(f"--url {url!r} must start with http:// or https://.")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise EndpointError(f"--url {url!r} is not a valid URL ({exc}).") from None
        if not parts.hostname:
            raise EndpointError(f"--url {url!r} names no host.")
        self.base = url.rstrip("/")
        self._https, self._host, self._port = parts.scheme == "https", parts.hostname, port
        self._prefix = parts.path.rstrip("/")
        self.timeout_s, self.max_answer_bytes = float(timeout_s), max_answer_bytes
        self._deadline: float | None = None  # monotonic; set by the first call

    def _late(self, path: str) -> EndpointError:
        return EndpointError(
            f"{self.base}{path} did not answer within the check's deadline of {self.timeout_s:g} s "
            "(--timeout, for all its requests together)."
        )

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request, all of it (connect, send, headers, body) before the client's deadline."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout_s
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._late(path)
        data = None if body is None else json.dumps(body).encode()
        connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = connection_class(self._host, self._port, timeout=left)
        expired = threading.Event()
        sockets: list[socket.socket] = []

        def expire() -> None:  # unblocks whatever read or write is waiting on the socket
            expired.set()
            # The socket as connected: http.client drops connection.sock once an answer will close the
            # connection (HTTP/1.0, "Connection: close"), while the answer is still read from it.
            for sock in [*sockets, connection.sock]:
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        watchdog = threading.Timer(left, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.connect()
            sockets.append(connection.sock)
            if expired.is_set():  # the deadline passed while connecting, before the socket was known
                raise TimeoutError
            connection.request(
                method,
                self._prefix + path,
                body=data,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            response = connection.getresponse()
            raw = self._read_body(response, path)
            status = response.status
        except EndpointError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set() or isinstance(exc, TimeoutError):
                raise self._late(path) from None
            raise EndpointError(f"cannot reach {self.base} ({exc}); check the URL and that the server is up.") from None
        finally:
            watchdog.cancel()
            connection.close()
        if expired.is_set():
            raise self._late(path)
        try:
            return status, json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            snippet = raw[:120].decode("utf-8", "replace")
            raise EndpointError(
                f"{self.base}{path} answered HTTP {status} with something that is not JSON "
                f"({snippet!r}); is this a V2 inference server?"
            ) from None

    def _read_body(self, response: http.client.HTTPResponse, path: str) -> bytes:
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_answer_bytes:
            raise EndpointError(
                f"{self.base}{path} announced an answer of {declared} bytes, more than "
                f"{self.max_answer_bytes} any answer to these requests needs; refused unread."
            )
        chunks, size = [], 0
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > self.max_answer_bytes:
                raise EndpointError(
                    f"{self.base}{path} answered more than {self.max_answer_bytes} bytes, more "
                    "than any answer to these requests needs; the check stopped reading."
                )
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _error_text(payload: Any) -> str:
        if isinstance(payload, dict) and "error" in payload:
            return str(payload["error"])[:300]
        try:
            return json.dumps(payload)[:300]
        except (ValueError, RecursionError):
            return "an answer too deep to show"

    def check_model(self, name: str, manifest: Manifest) -> None:
        """The server knows the model, is ready, and its inputs and outputs match the bundle's."""
        status, meta = self._call("GET", f"/v2/models/{name}")
        if status == 404:
            raise EndpointError(
                f"{self.base} does not serve a model named {name!r} ({self._error_text(meta)}); "
                "pass --model with the name it serves."
            )
        try:
            if status != 200:
                raise ValueError(f"HTTP {status}")
            metadata = ModelMetadata.model_validate(meta)
        except (ValueError, ValidationError) as exc:
            reason = _validation_text(exc) if isinstance(exc, ValidationError) else self._error_text(meta)
            raise EndpointError(
                f"{self.base}/v2/models/{name} answered HTTP {status} without V2 model metadata "
                f"({reason}); is this a V2 inference server?"
            ) from None
        served_inputs = {i.name for i in metadata.inputs}
        served_outputs = {o.name for o in metadata.outputs}
        missing = [s.name for s in manifest.inputs if s.name not in served_inputs]
        missing += [s.name for s in manifest.outputs if s.name not in served_outputs]
        if missing:
            raise EndpointError(
                f"model {name!r} at {self.base} has no tensor {missing[0]!r}; it is not this bundle's "
                f"model (it has inputs {sorted(served_inputs)}, outputs {sorted(served_outputs)})."
            )
        status, ready = self._call("GET", f"/v2/models/{name}/ready")
        if status != 200:
            raise EndpointError(f"model {name!r} at {self.base} is not ready ({self._error_text(ready)}).")

    def infer(self, name: str, manifest: Manifest, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        body = {
            "inputs": [_request_input(spec, inputs[spec.name]) for spec in manifest.inputs],
            "outputs": [{"name": spec.name} for spec in manifest.outputs],
        }
        status, answer = self._call("POST", f"/v2/models/{name}/infer", body)
        if status != 200:
            raise EndpointError(f"inference at {self.base} answered HTTP {status}: {self._error_text(answer)}.")
        try:
            response = InferenceResponse.model_validate(answer)
            by_name = {o.name: o for o in response.outputs}
            return {spec.name: _response_array(by_name[spec.name], spec) for spec in manifest.outputs}
        except ValidationError as exc:
            raise EndpointError(
                f"inference at {self.base} answered something that is not a V2 inference response "
                f"({_validation_text(exc)})."
            ) from None
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise EndpointError(
                f"inference at {self.base} answered something that is not a V2 inference response "
                f"for this model ({type(exc).__name__}: {str(exc)[:200]})."
            ) from None

    def infer_all(
        self, name: str, manifest: Manifest, inputs: Mapping[str, np.ndarray], batch: int
    ) -> dict[str, np.ndarray]:
        total = int(next(iter(inputs.values())).shape[0])
        parts: dict[str, list[np.ndarray]] = {spec.name: [] for spec in manifest.outputs}
        for start in range(0, total, batch):
            answer = self.infer(name, manifest, {k: v[start : start + batch] for k, v in inputs.items()})
            for key, value in answer.items():
                parts[key].append(value)
        return {key: np.concatenate(chunks, axis=0) for key, chunks in parts.items()}


def _request_input(spec: TensorSpec, array: np.ndarray) -> dict[str, Any]:
    data = array.reshape(-1)
    return {
        "name": spec.name,
        "shape": list(array.shape),
        "datatype": v2_datatype(spec),
        "data": [str(v) for v in data] if spec.dtype == "string" else data.tolist(),
    }


def _response_array(output: Any, spec: TensorSpec) -> np.ndarray:
    """One validated response output as an array of the declared shape (a mismatch is a ValueError)."""
    dtype = V2_TO_NUMPY.get(output.datatype, spec.dtype)
    if dtype == "string":
        array = np.asarray(output.data, dtype=object)
    else:
        array = np.asarray(output.data, dtype=np.dtype(dtype))
    if any(d < 0 for d in output.shape) or math.prod(output.shape) != array.size:
        raise ValueError(f"output {output.name!r} has {array.size} values for shape {output.shape}")
    return array.reshape(output.shape)


def _validation_text(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])[:100] or 'the answer'}: {first['msg'][:200]}"
