"""Running the V2 app with uvicorn: one process by default, graceful shutdown on SIGTERM."""

from __future__ import annotations

import logging
import os

from ..checker import environment_drift, settings_from_manifest
from ..errors import UsageError
from ..store import open_bundle
from .app import ENV_OPTIONS, Preflight, ServeOptions, create_app

# In-flight requests get this long to finish after SIGTERM before connections are closed.
GRACEFUL_SHUTDOWN_S = 30


def preflight(options: ServeOptions) -> Preflight:
    """Fail fast, with the documented exit code, before binding a port: integrity and drift policy.

    Parity is checked by the server itself after it starts (it then stays not ready).
    """
    if options.max_batch_size < 1 or options.max_request_batch < 1 or options.max_body_bytes < 1:
        raise UsageError("--max-batch-size, --max-request-batch and --max-body-bytes must be positive.")
    if options.max_batch_delay_ms < 0:
        raise UsageError("--max-batch-delay-ms must be >= 0.")
    bundle = open_bundle(options.bundle, options.public_key)
    drift = environment_drift(bundle, options.env_policy, list(settings_from_manifest(bundle.manifest).providers))
    return Preflight(bundle=bundle, drift=drift)


def serve(options: ServeOptions, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
          log_level: str = "info") -> None:
    """Serve a bundle until SIGINT/SIGTERM.

    Args:
        options: what to serve and how.
        host / port: where to listen.
        workers: server processes (each verifies and checks the bundle on its own).
        log_level: uvicorn's and paritybundle's log level.
    """
    import uvicorn

    if workers < 1:
        raise UsageError("--workers must be at least 1.")
    verified = preflight(options)
    logging.getLogger("paritybundle").setLevel(log_level.upper())
    # ws="none": the V2 protocol has no websockets, and uvicorn's "auto" imports a websockets
    # implementation into every server (~9 ms of start-up) to serve none.
    common = dict(host=host, port=port, log_level=log_level, access_log=False, ws="none",
                  timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    if workers == 1:
        # This process verified the bundle a moment ago: its server reuses that, not hashing it twice.
        uvicorn.Server(uvicorn.Config(create_app(options, verified), **common)).run()
    else:
        # Worker processes import the app by name; they read their options from the environment.
        os.environ[ENV_OPTIONS] = options.to_json()
        uvicorn.run("paritybundle.serving.app:app_from_environment", factory=True, workers=workers, **common)
