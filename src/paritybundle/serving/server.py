"""Running the V2 app with uvicorn: one process by default, graceful shutdown on SIGTERM."""

from __future__ import annotations

import logging
import os
import time

from ..bundle.store import open_bundle
from ..errors import UsageError
from ..runtime.load import ServingRuntime, environment_drift
from ..runtime.session import session_settings
from .app import ENV_OPTIONS, create_app
from .state import ServeOptions, open_serving_runtime

# In-flight requests get this long to finish after SIGTERM before connections are closed.
GRACEFUL_SHUTDOWN_S = 30


def preflight(options: ServeOptions, *, load: bool) -> ServingRuntime | None:
    """Fail fast, with the documented exit code, before binding a port: integrity, the drift
    policy and, with ``load``, a pipeline ONNX Runtime cannot load.

    ``load``: open the session the server will serve (one process). A supervisor of worker
    processes only verifies: each worker opens its own, and the supervisor must not hold one.
    Parity is checked by the server itself after it starts (it then stays not ready).
    """
    if options.max_batch_size < 1 or options.max_request_batch < 1 or options.max_body_bytes < 1:
        raise UsageError("--max-batch-size, --max-request-batch and --max-body-bytes must be positive.")
    if options.max_batch_delay_ms < 0:
        raise UsageError("--max-batch-delay-ms must be >= 0.")
    if load:
        return open_serving_runtime(options)
    bundle = open_bundle(options.bundle, options.public_key)
    environment_drift(bundle, options.env_policy, list(session_settings(bundle.manifest, options.session).providers))
    return None


def serve(options: ServeOptions, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
          log_level: str = "info") -> None:
    """Serve a bundle until SIGINT/SIGTERM.

    Args:
        options: what to serve and how.
        host / port: where to listen.
        workers: server processes (each verifies and checks the bundle on its own).
        log_level: uvicorn's and paritybundle's log level.
    """
    import onnxruntime  # noqa: F401  (imported lazily elsewhere; here, so start-up time counts work, not imports)
    import uvicorn

    if workers < 1:
        raise UsageError("--workers must be at least 1.")
    started = time.perf_counter()  # paritybundle_startup_seconds counts from here: after the imports
    logging.getLogger("paritybundle").setLevel(log_level.upper())
    # ws="none": the V2 protocol has no websockets, and uvicorn's "auto" imports a websockets
    # implementation into every server (~9 ms of start-up) to serve none.
    common = dict(host=host, port=port, log_level=log_level, access_log=False, ws="none",
                  timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    if workers == 1:
        # The session opened (while the files hashed) before the port is bound is the one served.
        runtime = preflight(options, load=True)
        uvicorn.Server(uvicorn.Config(create_app(options, runtime, started), **common)).run()
    else:
        preflight(options, load=False)
        # Worker processes import the app by name; they read their options from the environment.
        os.environ[ENV_OPTIONS] = options.to_json()
        uvicorn.run("paritybundle.serving.app:app_from_environment", factory=True, workers=workers, **common)
