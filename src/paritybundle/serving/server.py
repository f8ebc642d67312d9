"""Running the V2 app with uvicorn: one process by default, graceful shutdown on SIGTERM."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any

from ..bundle.store import open_bundle
from ..errors import UsageError
from ..runtime.load import ServingRuntime, environment_drift
from ..runtime.session import session_settings
from .app import ENV_LOG_LEVEL, ENV_OPTIONS, create_app
from .capture import prepare_directory
from .defaults import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS
from .limits import ENV_BODY_TIMEOUT, ENV_HEADER_TIMEOUT, HeaderDeadlineProtocol
from .state import ServeOptions, open_serving_runtime

# In-flight requests get this long to finish after SIGTERM before connections are closed.
GRACEFUL_SHUTDOWN_S = 30
# A partial batch waits at most this long for more rows (a longer wait is a misconfiguration, not batching).
MAX_BATCH_DELAY_MS = 10_000.0


def preflight(options: ServeOptions, *, load: bool) -> ServingRuntime | None:
    """Fail fast, with the documented exit code, before binding a port: integrity, the drift
    policy and, with ``load``, a pipeline ONNX Runtime cannot load.

    ``load``: open the session the server will serve (one process). A supervisor of worker
    processes only verifies: each worker opens its own, and the supervisor must not hold one.
    Parity is checked by the server itself after it starts (it then stays not ready).
    """
    if min(options.max_batch_size, options.max_request_batch, options.max_body_bytes, options.max_answer_bytes) < 1:
        raise UsageError(
            "--max-batch-size, --max-request-batch, --max-body-bytes and --max-answer-bytes must be positive."
        )
    if options.max_inflight_bytes < options.max_body_bytes:
        raise UsageError(
            "--max-inflight-bytes must be at least --max-body-bytes, or no request of the largest "
            "size could ever be read."
        )
    if not (math.isfinite(options.max_batch_delay_ms) and 0 <= options.max_batch_delay_ms <= MAX_BATCH_DELAY_MS):
        raise UsageError(
            f"--max-batch-delay-ms must be a number of milliseconds from 0 to {MAX_BATCH_DELAY_MS:.0f}, "
            f"got {options.max_batch_delay_ms}."
        )
    capture = options.capture_options
    if capture is not None:  # an unwritable directory is exit 2 now, not dropped traffic later
        prepare_directory(capture)
    if load:
        return open_serving_runtime(options)
    bundle = open_bundle(options.bundle, options.public_key)
    environment_drift(bundle, options.env_policy, list(session_settings(bundle.manifest, options.session).providers))
    return None


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def serve(
    options: ServeOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    log_level: str = "info",
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> None:
    """Serve a bundle until SIGINT/SIGTERM.

    Args:
        options: what to serve and how (bodies in flight: ``options.max_inflight_bytes``).
        host / port: where to listen (bound after the bundle verified, before the check).
        workers: server processes (each verifies and checks the bundle on its own).
        log_level: uvicorn's and paritybundle's log level.
        max_connections: connections or requests at once; past it, 503.
        header_timeout_s: a connection's request headers must be complete within this.
        body_timeout_s: and each request's body within this of its headers.

    Raises:
        UsageError: a bad option, or an address that cannot be listened on (exit 2).
        BundleInvalid / EnvironmentRefused: the bundle, before anything listens (exit 3 / 4).
    """
    import onnxruntime  # noqa: F401  (imported lazily elsewhere; here, so start-up time counts work, not imports)
    import uvicorn

    _check_options(host, port, workers, log_level, max_connections, header_timeout_s, body_timeout_s)
    started = time.perf_counter()  # paritybundle_startup_seconds counts from here: after the imports
    logging.getLogger("paritybundle").setLevel(log_level.upper())
    os.environ[ENV_HEADER_TIMEOUT] = repr(float(header_timeout_s))  # worker processes read these too
    os.environ[ENV_BODY_TIMEOUT] = repr(float(body_timeout_s))
    # ws="none": the V2 protocol has no websockets, and uvicorn's "auto" imports a websockets
    # implementation into every server (~9 ms of start-up) to serve none.
    common: dict[str, Any] = dict(
        log_level=log_level,
        access_log=False,
        ws="none",
        http=HeaderDeadlineProtocol,
        limit_concurrency=max_connections,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    if workers == 1:
        # The session opened (while the files hashed) before the port is bound is the one served.
        runtime = preflight(options, load=True)
        sock = _listen(host, port)
        uvicorn.Server(uvicorn.Config(create_app(options, runtime, started), **common)).run(sockets=[sock])
    else:
        preflight(options, load=False)
        _listen(host, port).close()  # a clear error now; uvicorn's own bind would exit 3, "bundle invalid"
        # Worker processes import the app by name; they read their options from the environment.
        os.environ[ENV_OPTIONS] = options.to_json()
        os.environ[ENV_LOG_LEVEL] = log_level
        try:
            uvicorn.run(
                "paritybundle.serving.app:app_from_environment",
                factory=True,
                workers=workers,
                host=host,
                port=port,
                **common,
            )
        except SystemExit as exc:
            if exc.code == 3:  # uvicorn's STARTUP_FAILURE: the address was taken in between
                raise UsageError(f"cannot listen on {host}:{port}; choose another --host or --port.") from None
            raise


def _check_options(
    host: str,
    port: int,
    workers: int,
    log_level: str,
    max_connections: int,
    header_timeout_s: float,
    body_timeout_s: float,
) -> None:
    if workers < 1:
        raise UsageError("--workers must be at least 1.")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port; use 1-65535 (0: any free port).")
    if log_level.lower() not in LOG_LEVELS:
        raise UsageError(f"--log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}.")
    if max_connections < 1:
        raise UsageError("--max-connections must be at least 1.")
    for option, value in (("--header-timeout", header_timeout_s), ("--body-timeout", body_timeout_s)):
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"{option} must be a positive number of seconds.")
    if not host:
        raise UsageError("--host must name an address to listen on.")


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (what uvicorn would bind), or a usage error saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise UsageError(
            f"cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc}); check --host."
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or stop what listens there."
        ) from None
    sock.set_inheritable(True)
    return sock
