"""The V2 inference server: ready only after parity holds.

Start-up order: parse -> verify (the pipeline's session is created while the files
hash) -> environment policy -> check -> ready.
The check runs in the app's start-up, before the process accepts a connection, so
whenever it answers (``/v2/health/live``) it has a verdict: with several worker
processes sharing a port, a probe that reaches any of them learns the truth about
that one. Only when parity holds does ``/v2/health/ready`` say 200 and ``infer``
answer; a bundle that fails comes up not ready, says why at ``/v2/models/{name}``
and in the log, and never serves.

Starlette (not FastAPI) routes: the infer path is hot, and request validation is
done against the bundle's own specs, which FastAPI's per-route models would duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging

import orjson
import os
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..checker import ServingRuntime, check_runtime, open_runtime, settings_from_manifest
from ..errors import InputValidationError, ParityBundleError
from ..parity import explain_failure
from ..store import read_manifest
from .batching import MicroBatcher
from .protocol import BadRequest, input_array, output_json, parse_request, tensor_metadata

log = logging.getLogger("paritybundle.serve")

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_REQUEST_BATCH = 1024


@dataclass(frozen=True)
class ServeOptions:
    """Everything that configures one server process (also passed to extra workers as JSON)."""

    bundle: str
    env_policy: str = "strict"
    max_batch_size: int = 64
    max_batch_delay_ms: float = 0.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_request_batch: int = DEFAULT_MAX_REQUEST_BATCH
    intra_op_num_threads: int | None = None
    public_key: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))


class Metrics:
    """Prometheus metrics in a registry of this app's own (several apps may share a process in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("paritybundle_requests", "Requests answered, by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("paritybundle_request_latency_seconds", "Time to answer, by endpoint.",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.batch_rows = Histogram("paritybundle_batch_rows", "Rows per ONNX Runtime call.", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.parity = Gauge("paritybundle_parity_verdict",
                            "Start-up parity check: 1 holds, 0 fails, -1 not yet known.", registry=self.registry)
        self.startup = Gauge("paritybundle_startup_seconds", "Seconds from the start of serving (after imports) to ready.",
                             registry=self.registry)
        self.parity.set(-1)


@dataclass
class ServerState:
    options: ServeOptions
    metrics: Metrics = field(default_factory=Metrics)
    runtime: ServingRuntime | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    status: str = "starting"  # starting | ready | failed
    reason: str | None = "the bundle is being verified and its parity checked"
    name: str | None = None
    version: str | None = None
    parity_summary: dict[str, Any] | None = None


def _json(payload: Any, status: int = 200) -> Response:
    # orjson: 5-10x faster than json.dumps on the hot path, and it writes NaN as null, never invalid JSON.
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _decode(body: bytes) -> Any:
    """orjson for speed; the stdlib decoder as a fallback only for its NaN/Infinity tokens."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON ({type(exc).__name__}: {str(exc)[:200]}).") from None


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


async def _start(state: ServerState, started: float, runtime: ServingRuntime | None) -> None:
    """Verify, construct and check in a worker thread; become ready only if parity holds.

    ``runtime``: the bundle this process already opened, verified and judged for drift
    before it bound the port (``bundle serve``); a worker process of its own
    (``--workers N``) opens it here.
    """
    loop = asyncio.get_running_loop()
    options = state.options
    try:
        if runtime is None:
            runtime = await loop.run_in_executor(None, open_serving_runtime, options)
        state.name, state.version = runtime.manifest.name, runtime.manifest.version
        report = await loop.run_in_executor(None, check_runtime, runtime)
    except ParityBundleError as exc:
        state.status, state.reason = "failed", str(exc)
        state.metrics.parity.set(0)
        log.error("not ready: %s", exc)
        return
    state.parity_summary = {
        "passed": report.passed,
        "samples": report.settings.samples,
        "outputs": {o.name: {"passed": o.passed, "max_abs": o.stats.max_abs if o.stats else None}
                    for o in report.outputs},
    }
    elapsed = time.perf_counter() - started
    if not report.passed:
        state.status = "failed"
        state.reason = "parity fails, so this server will not serve: " + " ".join(
            [explain_failure(o) for o in report.outputs if not o.passed]
            + ([f"Where: {report.diagnosis}"] if report.diagnosis else []))
        state.metrics.parity.set(0)
        log.error("not ready after %.2f s: %s", elapsed, state.reason)
        return
    metrics = state.metrics
    state.batcher = MicroBatcher(lambda inputs: runtime.runner.run(inputs, None), options.max_batch_size,
                                 options.max_batch_delay_ms, on_batch=metrics.batch_rows.observe)
    state.batcher.start()
    state.runtime = runtime
    state.ready, state.status, state.reason = True, "ready", None
    metrics.parity.set(1)
    metrics.startup.set(elapsed)
    log.info("ready in %.2f s: %s v%s, parity holds on %d reference samples (%s)", elapsed, state.name,
             state.version, report.settings.samples,
             ", ".join(f"{o.name} max abs {o.stats.max_abs:.2g}" for o in report.outputs if o.stats))


def open_serving_runtime(options: ServeOptions) -> ServingRuntime:
    """Verify the bundle, load its pipeline with the settings it was validated with (threads as
    ``options`` say) and judge the environment's drift: raises with the documented exit code."""

    def settings(manifest: Any):
        recorded = settings_from_manifest(manifest)
        threads = options.intra_op_num_threads
        return recorded if threads is None else dataclasses.replace(recorded, intra_op_num_threads=threads)

    return open_runtime(options.bundle, settings, options.env_policy, options.public_key)


def create_app(options: ServeOptions, runtime: ServingRuntime | None = None, started: float | None = None) -> Starlette:
    """The ASGI app serving one bundle; start-up checks run when the app starts.

    ``runtime``: the bundle already opened by :func:`open_serving_runtime` (``bundle serve``
    does so before it binds its port), and ``started`` when that began.

    Example:
        >>> app = create_app(ServeOptions(bundle="artifacts/digits"))  # doctest: +SKIP
        >>> uvicorn.run(app, port=8080)  # doctest: +SKIP
    """
    state = ServerState(options)
    started = time.perf_counter() if started is None else started

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await _start(state, started, runtime)
        yield
        if state.batcher is not None:
            await state.batcher.stop()

    counters: dict[tuple[str, int], Any] = {}
    histograms: dict[str, Any] = {}

    def observe(endpoint: str, response: Response, began: float) -> Response:
        # labels() looks the child up under a lock each call; keep the children.
        key = (endpoint, response.status_code)
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = state.metrics.requests.labels(endpoint, str(response.status_code))
        histogram = histograms.get(endpoint)
        if histogram is None:
            histogram = histograms[endpoint] = state.metrics.latency.labels(endpoint)
        counter.inc()
        histogram.observe(time.perf_counter() - began)
        return response

    def unknown_model(name: str, version: str | None) -> Response | None:
        if state.name is None:
            if state.status == "failed":
                return _error(f"no model is served: {state.reason}", 503)
            return _error("the server is still starting; retry when /v2/health/ready answers 200.", 503)
        if name != state.name:
            return _error(f"model {name!r} is not served here; this server serves {state.name!r}.", 404)
        if version is not None and version != state.version:
            return _error(f"model {name!r} has no version {version!r}; this server serves version {state.version!r}.", 404)
        return None

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        if state.ready:
            return _json({"ready": True})
        return _json({"ready": False, "status": state.status, "reason": state.reason}, 503)

    async def server_metadata(request: Request) -> Response:
        return _json({"name": "paritybundle", "version": __version__, "extensions": []})

    async def model_metadata(request: Request) -> Response:
        began = time.perf_counter()
        name, version = request.path_params["name"], request.path_params.get("version")
        problem = unknown_model(name, version)
        if problem is not None and not (state.status == "failed" and state.name is not None and problem.status_code == 503):
            return observe("metadata", problem, began)
        manifest = state.runtime.manifest if state.runtime else None
        if manifest is None:
            manifest = read_manifest(state.options.bundle)
        return observe("metadata", _json({
            "name": manifest.name,
            "versions": [manifest.version],
            "platform": "onnxruntime_onnx",
            "inputs": [tensor_metadata(s) for s in manifest.inputs],
            "outputs": [tensor_metadata(s) for s in manifest.outputs],
            "parameters": {"ready": state.ready, "status": state.status, "reason": state.reason,
                           "parity": state.parity_summary},
        }), began)

    async def model_ready(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        problem = unknown_model(name, version)
        if problem is not None and problem.status_code == 404:
            return problem
        if state.ready:
            return _json({"name": name, "ready": True})
        return _json({"name": name, "ready": False, "status": state.status, "reason": state.reason}, 503)

    async def read_body(request: Request) -> bytes:
        limit = state.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise BadRequest(f"the body is {declared} bytes, over this server's limit of {limit}.", 413)
            except ValueError:
                raise BadRequest("the Content-Length header is not a number.") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"the body is over this server's limit of {limit} bytes.", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def infer(request: Request) -> Response:
        began = time.perf_counter()
        name, version = request.path_params["name"], request.path_params.get("version")
        try:
            problem = unknown_model(name, version)
            if problem is not None:
                return observe("infer", problem, began)
            if not state.ready or state.runtime is None or state.batcher is None:
                return observe("infer", _error(f"model {name!r} is not ready: {state.reason}", 503), began)
            body = await read_body(request)
            inference = parse_request(_decode(body))
            manifest = state.runtime.manifest
            specs = {s.name: s for s in manifest.inputs}
            arrays = {}
            for item in inference.inputs:
                if item.name not in specs:
                    raise BadRequest(f"input {item.name!r} is not an input of {name}; it takes {', '.join(specs)}.")
                if item.name in arrays:
                    raise BadRequest(f"input {item.name!r} is given twice.")
                arrays[item.name] = input_array(item, specs[item.name], max_batch=state.options.max_request_batch)
            missing = [n for n in specs if n not in arrays]
            if missing:
                raise BadRequest(f"input {missing[0]!r} is missing; {name} takes {', '.join(specs)}.")
            if len(arrays) > 1:
                arrays = state.runtime.runner.validate(arrays)  # cross-input checks (a shared batch size)
            output_specs = {s.name: s for s in manifest.outputs}
            wanted = list(output_specs)
            if inference.outputs:
                wanted = [o.name for o in inference.outputs]
                unknown = [n for n in wanted if n not in output_specs]
                if unknown:
                    raise BadRequest(f"output {unknown[0]!r} is not an output of {name}; it has {', '.join(output_specs)}.")
            outputs = await state.batcher.submit(arrays)
            answer = {"model_name": manifest.name, "model_version": manifest.version,
                      "outputs": [output_json(n, outputs[n], output_specs[n]) for n in wanted]}
            if inference.id is not None:
                answer["id"] = inference.id
            return observe("infer", _json(answer), began)
        except BadRequest as exc:
            return observe("infer", _error(exc.message, exc.status), began)
        except InputValidationError as exc:
            return observe("infer", _error(str(exc), 400), began)
        except ClientDisconnect:
            return observe("infer", _error("the client disconnected.", 400), began)
        except Exception:
            log.exception("internal error while answering an inference request")
            return observe("infer", _error("internal error in paritybundle; the server log has the traceback.", 500), began)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    base = "/v2/models/{name}"
    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route(base, model_metadata),
        Route(base + "/versions/{version}", model_metadata),
        Route(base + "/ready", model_ready),
        Route(base + "/versions/{version}/ready", model_ready),
        Route(base + "/infer", infer, methods=["POST"]),
        Route(base + "/versions/{version}/infer", infer, methods=["POST"]),
        Route("/metrics", metrics),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = state
    return app


ENV_OPTIONS = "PARITYBUNDLE_SERVE_OPTIONS"


def app_from_environment() -> Starlette:
    """The app factory uvicorn's worker processes call (options come as JSON in the environment)."""
    return create_app(ServeOptions.from_json(os.environ[ENV_OPTIONS]))
