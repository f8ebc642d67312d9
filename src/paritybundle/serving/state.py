"""One server process's configuration, metrics and state, and its start-up: verify -> check -> ready.

Start-up order: parse -> verify (the pipeline's session is created while the files
hash) -> environment policy -> check -> ready. Only when parity holds does the state
become ready and the micro-batcher start; a bundle that fails leaves the state
``failed`` with its reason, and the manifest (when it parsed and verified) so that
metadata can still say what would have been served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.responses import Response

from ..bundle.manifest import Manifest
from ..bundle.strict import printable
from ..check.checks import check_runtime
from ..errors import ParityBundleError
from ..parity.explain import explain_failure
from ..runtime.load import ServingRuntime, load
from ..runtime.session import SessionOverrides
from .batching import MicroBatcher
from .capture import CaptureOptions, CaptureWriter
from .decoding import InputDecoder
from .defaults import (
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_REQUEST_BATCH,
)
from .limits import BodyBudget

log = logging.getLogger("paritybundle.serve")


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
    # ONNX Runtime execution providers in priority order (None: those the bundle was validated with).
    providers: list[str] | None = None
    public_key: str | None = None
    # Request bytes being read and decoded at once (serving/limits.py); past it, 503 and Retry-After.
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    # The largest answer built for one request (serving/limits.py); past it, 413.
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    # Captured traffic (serving/capture.py): None, or the options of `--capture DIR`.
    capture: dict[str, Any] | None = None

    @property
    def capture_options(self) -> CaptureOptions | None:
        return CaptureOptions(**self.capture) if self.capture is not None else None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))

    @property
    def session(self) -> SessionOverrides:
        """The session settings this server changes; the rest are the bundle's own."""
        return SessionOverrides(
            providers=tuple(self.providers) if self.providers else None, intra_op_num_threads=self.intra_op_num_threads
        )


def open_serving_runtime(options: ServeOptions) -> ServingRuntime:
    """Verify the bundle, load its pipeline with the settings it was validated with (as ``options``
    override them) and judge the environment's drift: raises with the documented exit code."""
    return load(options.bundle, options.session, options.env_policy, options.public_key)


class Metrics:
    """Prometheus metrics in a registry of this app's own (several apps may share a process in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "paritybundle_requests",
            "Requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "paritybundle_request_latency_seconds",
            "Time to answer, by endpoint.",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        )
        self.batch_rows = Histogram(
            "paritybundle_batch_rows",
            "Rows per ONNX Runtime call.",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.parity = Gauge(
            "paritybundle_parity_verdict",
            "Start-up parity check: 1 holds, 0 fails, -1 not yet known.",
            registry=self.registry,
        )
        self.startup = Gauge(
            "paritybundle_startup_seconds",
            "Seconds from the start of serving (after imports) to ready.",
            registry=self.registry,
        )
        self.parity.set(-1)
        # labels() looks the child up under a lock each call; the children are kept.
        self._counters: dict[tuple[str, int], Any] = {}
        self._histograms: dict[str, Any] = {}

    def observe(self, endpoint: str, response: Response, began: float) -> Response:
        """Count ``response`` and its latency since ``began``; returns it."""
        key = (endpoint, response.status_code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(endpoint, str(response.status_code))
        histogram = self._histograms.get(endpoint)
        if histogram is None:
            histogram = self._histograms[endpoint] = self.latency.labels(endpoint)
        counter.inc()
        histogram.observe(time.perf_counter() - began)
        return response


@dataclass
class ServerState:
    options: ServeOptions
    metrics: Metrics = field(default_factory=Metrics)
    runtime: ServingRuntime | None = None
    batcher: MicroBatcher | None = None
    ready: bool = False
    status: str = "starting"  # starting | ready | failed
    reason: str | None = "the bundle is being verified and its parity checked"
    # Set once the bundle verified, whether or not parity then held.
    manifest: Manifest | None = None
    parity_summary: dict[str, Any] | None = None
    # Request inputs -> validated arrays, made once parity holds.
    decode: InputDecoder | None = None
    bodies: BodyBudget | None = None
    capture: CaptureWriter | None = None

    def __post_init__(self) -> None:
        self.bodies = BodyBudget(self.options.max_inflight_bytes)

    @property
    def name(self) -> str | None:
        return self.manifest.name if self.manifest is not None else None

    @property
    def version(self) -> str | None:
        return self.manifest.version if self.manifest is not None else None

    async def start(self, started: float, runtime: ServingRuntime | None) -> None:
        """Verify, construct and check in a worker thread; become ready only if parity holds.

        ``runtime``: the bundle this process already opened, verified and judged for drift
        before it bound the port (``bundle serve``); a worker process of its own
        (``--workers N``) opens it here.
        """
        loop = asyncio.get_running_loop()
        try:
            if runtime is None:
                runtime = await loop.run_in_executor(None, open_serving_runtime, self.options)
            self.manifest = runtime.manifest
            report = await loop.run_in_executor(None, check_runtime, runtime)
        except ParityBundleError as exc:
            self._fail(str(exc))
            log.error("not ready: %s", printable(exc))
            return
        self.parity_summary = {
            "passed": report.passed,
            "samples": report.settings.samples,
            "outputs": {
                o.name: {"passed": o.passed, "max_abs": o.stats.max_abs if o.stats else None} for o in report.outputs
            },
        }
        elapsed = time.perf_counter() - started
        if not report.passed:
            self._fail(
                "parity fails, so this server will not serve: "
                + " ".join(
                    [explain_failure(o) for o in report.outputs if not o.passed]
                    + ([f"Where: {report.diagnosis}"] if report.diagnosis else [])
                )
            )
            log.error("not ready after %.2f s: %s", elapsed, printable(self.reason))
            return
        options, metrics = self.options, self.metrics
        self.batcher = MicroBatcher(
            lambda inputs: runtime.runner.run(inputs, None),
            options.max_batch_size,
            options.max_batch_delay_ms,
            on_batch=metrics.batch_rows.observe,
        )
        self.batcher.start()
        self.decode = InputDecoder(
            runtime.manifest.inputs,
            model=runtime.manifest.name,
            max_batch=options.max_request_batch,
            bounds=runtime.runner.bounds,
        )
        capture = options.capture_options
        if capture is not None:
            manifest_bytes = (runtime.bundle.root / "bundle.json").read_bytes()  # verified (a signed one: the snapshot)
            self.capture = CaptureWriter(capture, runtime.manifest, manifest_bytes, metrics.registry)
            self.capture.start()
        self.runtime = runtime
        _settle_garbage_collection()
        self.ready, self.status, self.reason = True, "ready", None
        metrics.parity.set(1)
        metrics.startup.set(elapsed)
        log.info(
            "ready in %.2f s: %s v%s, parity holds on %d reference samples (%s)",
            elapsed,
            self.name,
            printable(self.version),
            report.settings.samples,
            printable(", ".join(f"{o.name} max abs {o.stats.max_abs:.2g}" for o in report.outputs if o.stats)),
        )

    def _fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason
        self.metrics.parity.set(0)

    async def stop(self) -> None:
        if self.ready:  # what start-up froze is collectable again (an app made in-process, as tests do)
            _unsettle_garbage_collection()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.capture is not None:  # what is queued is written, the last file completed
            await asyncio.get_running_loop().run_in_executor(None, self.capture.stop)


# Collections of the youngest generation once per this many new container objects (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10000


def _settle_garbage_collection() -> None:
    """Everything start-up made (ONNX Runtime's bindings, pydantic's schemas, numpy, the reference set) lives
    as long as the process: collected once, then frozen out of the collector's reach, so a full collection
    scans only what requests made since. Measured (digits MLP, 1-row requests at concurrency 64, 2 cores):
    full collections of the start-up heap paused the loop up to 46 ms, which was the p99 (52 ms at p50 11 ms);
    frozen, they take under 2 ms. The youngest generation is collected per 10,000 new objects instead of
    700: a request makes a few hundred, and each collection is a pause every request in flight shares."""
    import gc

    gc.collect()
    gc.freeze()
    _PREVIOUS_THRESHOLD[:] = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *_PREVIOUS_THRESHOLD[1:])


_PREVIOUS_THRESHOLD: list[int] = []


def _unsettle_garbage_collection() -> None:
    import gc

    gc.unfreeze()
    if _PREVIOUS_THRESHOLD:
        gc.set_threshold(*_PREVIOUS_THRESHOLD)
