"""The V2 routes: each handler reads the process's :class:`~.state.ServerState` from the app.

A client's mistake is a 4xx with ``{"error": sentence}``; only a bug in paritybundle
answers 500 (and is logged with its traceback).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import orjson
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..bundle.strict import printable
from ..errors import InputValidationError, ModelRunError
from ..version import __version__
from . import binary
from .limits import BodyBudget, answer_bytes
from .state import ServerState
from .wire import BadRequest, InferenceRequest, RequestOutput, output_json, parse_request, tensor_metadata

log = logging.getLogger("paritybundle.serve")


def _state(request: Request) -> ServerState:
    return request.app.state.server


def json_response(payload: Any, status: int = 200) -> Response:
    # orjson: 5-10x faster than json.dumps on the hot path, and it writes NaN as null, never invalid JSON.
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def binary_response(
    answer: dict[str, Any], outputs: dict[str, Any], specs: dict[str, Any], as_bytes: list[bool]
) -> Response:
    """The JSON header, then each binary output's bytes in the order listed; the header's length in
    ``Inference-Header-Content-Length``."""
    chunks = []
    for entry, wanted in zip(answer["outputs"], as_bytes, strict=True):
        if wanted:
            data = binary.encode(outputs[entry["name"]], specs[entry["name"]].dtype)
            entry["parameters"] = {binary.BINARY_SIZE: len(data)}
            chunks.append(data)
    header = orjson.dumps(answer)
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def decode_json(body: bytes) -> Any:
    """orjson for speed; the stdlib decoder as a fallback only for its NaN/Infinity tokens."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON ({type(exc).__name__}: {str(exc)[:200]}).") from None


def _unknown_model(state: ServerState, name: str, version: str | None) -> Response | None:
    """A 404/503 answer when ``name``/``version`` is not what this server serves (or serves nothing yet)."""
    if state.name is None:
        if state.status == "failed":
            return error_response(f"no model is served: {state.reason}", 503)
        return error_response("the server is still starting; retry when /v2/health/ready answers 200.", 503)
    if name != state.name:
        return error_response(f"model {name!r} is not served here; this server serves {state.name!r}.", 404)
    if version is not None and version != state.version:
        return error_response(
            f"model {name!r} has no version {version!r}; this server serves version {state.version!r}.", 404
        )
    return None


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    state = _state(request)
    if state.ready:
        return json_response({"ready": True})
    return json_response({"ready": False, "status": state.status, "reason": state.reason}, 503)


async def server_metadata(request: Request) -> Response:
    return json_response({"name": "paritybundle", "version": __version__, "extensions": ["binary_tensor_data"]})


async def model_metadata(request: Request) -> Response:
    """The model's tensors, and whether (and why not) it is ready; answered even when parity failed."""
    began, state = time.perf_counter(), _state(request)
    problem = _unknown_model(state, request.path_params["name"], request.path_params.get("version"))
    if problem is not None:
        return state.metrics.observe("metadata", problem, began)
    manifest = state.manifest
    assert manifest is not None  # _unknown_model answered otherwise
    return state.metrics.observe(
        "metadata",
        json_response(
            {
                "name": manifest.name,
                "versions": [manifest.version],
                "platform": "onnxruntime_onnx",
                "inputs": [tensor_metadata(s) for s in manifest.inputs],
                "outputs": [tensor_metadata(s) for s in manifest.outputs],
                "parameters": {
                    "ready": state.ready,
                    "status": state.status,
                    "reason": state.reason,
                    "parity": state.parity_summary,
                    # the largest size of each limited symbolic dimension (-1 in "shape"): a longer request is a 400
                    "max_dims": {s.name: s.max_dims for s in manifest.inputs if s.max_dims},
                },
            }
        ),
        began,
    )


async def model_ready(request: Request) -> Response:
    state = _state(request)
    name = request.path_params["name"]
    problem = _unknown_model(state, name, request.path_params.get("version"))
    if problem is not None and problem.status_code == 404:
        return problem
    if state.ready:
        return json_response({"name": name, "ready": True})
    return json_response({"name": name, "ready": False, "status": state.status, "reason": state.reason}, 503)


class _Busy(Exception):
    """The bytes in flight would pass the budget: 503 with Retry-After, the body drained, never kept."""


async def _drain(request: Request) -> None:
    """Read and discard the rest of a body we will not use, so the client (still sending) reads our
    answer instead of a connection reset; no chunk is kept (the protocol bounds the time)."""
    try:
        async for _ in request.stream():
            pass
    except ClientDisconnect:
        pass


async def read_body(request: Request, limit: int, budget: BodyBudget, held: list[int]) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) passes ``limit``, and reserved
    against ``budget`` (what was reserved is added to ``held``, for the caller to give back)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("the Content-Length header is not a number.") from None
        if size > limit:
            raise BadRequest(f"the body is {declared} bytes, over this server's limit of {limit}.", 413)
        if not budget.take(size):
            await _drain(request)
            raise _Busy()
        held.append(size)
    chunks: list[bytes] = []
    size = 0
    # A body that trickles is cut off by the server's protocol (serving/limits.py): a ClientDisconnect here.
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the body is over this server's limit of {limit} bytes.", 413)
        if declared is None:  # chunked: reserved as it comes
            if not budget.take(len(chunk)):
                chunks.clear()
                await _drain(request)
                raise _Busy()
            held.append(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


# Bodies past this are parsed and decoded off the event loop. Measured: one BYTES tensor of 4M empty strings
# (16 MiB) held the loop for 2.6 s (the red team's figure); a 1 MiB JSON body of floats takes 4-8 ms to parse
# and convert here, long enough that other clients' requests are worth a hop to a thread. Small bodies, the
# hot path, stay on the loop.
OFF_LOOP_BODY_BYTES = 1024 * 1024


def decode_body(state: ServerState, body: bytes, header_length: str | None) -> tuple[InferenceRequest, dict[str, Any]]:
    """The request (JSON, and the binary tensor data after it) as the validated request and its arrays."""
    assert state.decode is not None
    header, tensor_bytes = binary.split_body(body, header_length)
    inference = parse_request(decode_json(header))
    return inference, state.decode(inference.inputs, binary.payloads(inference.inputs, tensor_bytes))


def requested_outputs(
    asked: list[RequestOutput] | None, specs: dict[str, Any], model: str
) -> list[tuple[str, dict[str, Any] | None]]:
    """``(name, parameters)`` of each output to answer: all of them when none are named; otherwise each
    named one once (a name asked for twice is refused: the answer is never larger than the model's)."""
    if not asked:
        return [(n, None) for n in specs]
    seen: set[str] = set()
    for output in asked:
        if output.name not in specs:
            raise BadRequest(
                f"output {printable(output.name)[:200]!r} is not an output of {model}; it has {', '.join(specs)}."
            )
        if output.name in seen:
            raise BadRequest(f"output {output.name!r} is asked for more than once; name each output once.")
        seen.add(output.name)
    return [(o.name, o.parameters) for o in asked]


async def infer(request: Request) -> Response:
    """Decode -> validate (the bundle's specs) -> batch -> answer; ready servers only."""
    began, received_at, state = time.perf_counter(), time.time(), _state(request)
    name = request.path_params["name"]
    observe = state.metrics.observe
    held: list[int] = []  # body bytes reserved in the budget, given back when the answer is made
    try:
        problem = _unknown_model(state, name, request.path_params.get("version"))
        if problem is not None:
            return observe("infer", problem, began)
        if not state.ready or state.runtime is None or state.batcher is None or state.decode is None:
            return observe("infer", error_response(f"model {name!r} is not ready: {state.reason}", 503), began)
        options, manifest = state.options, state.runtime.manifest
        assert state.bodies is not None
        body = await read_body(request, options.max_body_bytes, state.bodies, held)
        header_length = request.headers.get(binary.HEADER_LENGTH)
        if len(body) > OFF_LOOP_BODY_BYTES:  # decoding takes long enough to stall every other client: a thread
            inference, arrays = await asyncio.to_thread(decode_body, state, body, header_length)
        else:
            inference, arrays = decode_body(state, body, header_length)
        output_specs = {s.name: s for s in manifest.outputs}
        wanted = requested_outputs(inference.outputs, output_specs, name)
        as_bytes = [binary.wants_binary(inference.parameters, parameters) for _, parameters in wanted]
        outputs = await state.batcher.submit(arrays)
        size = answer_bytes([outputs[n] for n, _ in wanted], [output_specs[n].dtype for n, _ in wanted], as_bytes)
        if size > options.max_answer_bytes:
            raise BadRequest(
                f"the answer would take up to {size} bytes, over this server's limit of "
                f"{options.max_answer_bytes} (--max-answer-bytes); send fewer rows per request, ask for "
                "fewer outputs, or ask for binary data.",
                413,
            )
        if state.capture is not None:  # sampled onto a bounded queue; never blocks this request
            state.capture.submit(inference.id, received_at, arrays, outputs)
        answer = {
            "model_name": manifest.name,
            "model_version": manifest.version,
            "outputs": [
                output_json(n, outputs[n], output_specs[n], as_bytes=b)
                for (n, _), b in zip(wanted, as_bytes, strict=True)
            ],
        }
        if inference.id is not None:
            answer["id"] = inference.id
        if not any(as_bytes):
            return observe("infer", json_response(answer), began)
        return observe("infer", binary_response(answer, outputs, output_specs, as_bytes), began)
    except BadRequest as exc:
        return observe("infer", error_response(exc.message, exc.status), began)
    except ModelRunError as exc:  # passed every check, yet ONNX Runtime refused it: worth one line in the log
        log.warning("answered 400, the model cannot run on a request's inputs: %s", printable(exc))
        return observe("infer", error_response(str(exc), 400), began)
    except InputValidationError as exc:
        return observe("infer", error_response(str(exc), 400), began)
    except _Busy:
        busy = error_response(
            f"this server is reading {state.options.max_inflight_bytes} bytes of requests already; retry shortly.", 503
        )
        busy.headers["Retry-After"] = "1"
        return observe("infer", busy, began)
    except ClientDisconnect:
        return observe("infer", error_response("the client disconnected.", 400), began)
    except Exception:
        log.exception("internal error while answering an inference request")
        return observe(
            "infer", error_response("internal error in paritybundle; the server log has the traceback.", 500), began
        )
    finally:
        if held and state.bodies is not None:
            state.bodies.give_back(sum(held))


async def metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
