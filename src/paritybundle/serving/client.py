"""A small Open Inference Protocol (V2) REST client: what `bundle check --url` sends.

Standard library only (urllib): the check side gains no dependency, and a few
hundred requests do not need a connection pool.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from ..bundle.manifest import Manifest, TensorSpec
from ..errors import EndpointError
from .wire import V2_TO_NUMPY, v2_datatype


class V2Client:
    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise EndpointError(f"--url {url!r} must start with http:// or https://.")
        self.base = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except TimeoutError:
            raise EndpointError(f"{self.base}{path} did not answer within {self.timeout_s:g} s.") from None
        except urllib.error.URLError as exc:
            reason = exc.reason if not isinstance(exc.reason, socket.timeout) else f"no answer within {self.timeout_s:g} s"
            raise EndpointError(f"cannot reach {self.base} ({reason}); check the URL and that the server is up.") from None
        except (ConnectionError, OSError) as exc:
            raise EndpointError(f"cannot reach {self.base} ({exc}); check the URL and that the server is up.") from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            snippet = raw[:120].decode("utf-8", "replace")
            raise EndpointError(f"{self.base}{path} answered HTTP {status} with non-JSON ({snippet!r}); "
                                "is this a V2 inference server?") from None

    @staticmethod
    def _error_text(payload: Any) -> str:
        if isinstance(payload, dict) and "error" in payload:
            return str(payload["error"])
        return json.dumps(payload)[:300]

    def check_model(self, name: str, manifest: Manifest) -> None:
        """The server knows the model, is ready, and its inputs and outputs match the bundle's."""
        status, meta = self._call("GET", f"/v2/models/{name}")
        if status == 404:
            raise EndpointError(f"{self.base} does not serve a model named {name!r} ({self._error_text(meta)}); "
                                "pass --model with the name it serves.")
        if status != 200 or not isinstance(meta, dict) or "inputs" not in meta or "outputs" not in meta:
            raise EndpointError(f"{self.base}/v2/models/{name} answered HTTP {status} without V2 model metadata "
                                f"({self._error_text(meta)}); is this a V2 inference server?")
        served_inputs = {i.get("name") for i in meta["inputs"] if isinstance(i, dict)}
        served_outputs = {o.get("name") for o in meta["outputs"] if isinstance(o, dict)}
        missing = [s.name for s in manifest.inputs if s.name not in served_inputs]
        missing += [s.name for s in manifest.outputs if s.name not in served_outputs]
        if missing:
            raise EndpointError(f"model {name!r} at {self.base} has no tensor {missing[0]!r}; it is not this bundle's "
                                f"model (it has inputs {sorted(served_inputs)}, outputs {sorted(served_outputs)}).")
        status, ready = self._call("GET", f"/v2/models/{name}/ready")
        if status != 200:
            raise EndpointError(f"model {name!r} at {self.base} is not ready ({self._error_text(ready)}).")

    def infer(self, name: str, manifest: Manifest, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        body = {"inputs": [_request_input(spec, inputs[spec.name]) for spec in manifest.inputs],
                "outputs": [{"name": spec.name} for spec in manifest.outputs]}
        status, answer = self._call("POST", f"/v2/models/{name}/infer", body)
        if status != 200:
            raise EndpointError(f"inference at {self.base} answered HTTP {status}: {self._error_text(answer)}.")
        try:
            by_name = {o["name"]: o for o in answer["outputs"]}
            return {spec.name: _response_array(by_name[spec.name], spec) for spec in manifest.outputs}
        except (KeyError, TypeError, ValueError) as exc:
            raise EndpointError(f"inference at {self.base} answered something that is not a V2 inference response "
                                f"for this model ({type(exc).__name__}: {exc}).") from None

    def infer_all(self, name: str, manifest: Manifest, inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        total = int(next(iter(inputs.values())).shape[0])
        parts: dict[str, list[np.ndarray]] = {spec.name: [] for spec in manifest.outputs}
        for start in range(0, total, batch):
            answer = self.infer(name, manifest, {k: v[start:start + batch] for k, v in inputs.items()})
            for key, value in answer.items():
                parts[key].append(value)
        return {key: np.concatenate(chunks, axis=0) for key, chunks in parts.items()}


def _request_input(spec: TensorSpec, array: np.ndarray) -> dict[str, Any]:
    data = array.reshape(-1)
    return {"name": spec.name, "shape": list(array.shape), "datatype": v2_datatype(spec),
            "data": [str(v) for v in data] if spec.dtype == "string" else data.tolist()}


def _response_array(output: dict[str, Any], spec: TensorSpec) -> np.ndarray:
    datatype = output.get("datatype")
    dtype = V2_TO_NUMPY.get(datatype, spec.dtype)
    if dtype == "string":
        array = np.asarray(output["data"], dtype=object)
    else:
        array = np.asarray(output["data"], dtype=np.dtype(dtype))
    return array.reshape(output["shape"])
