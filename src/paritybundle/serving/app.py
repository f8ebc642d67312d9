"""The V2 inference server's ASGI app: ready only after parity holds.

The check runs in the app's start-up (:meth:`~.state.ServerState.start`), before the
process accepts a connection, so whenever it answers (``/v2/health/live``) it has a
verdict: with several worker processes sharing a port, a probe that reaches any of them
learns the truth about that one. Only when parity holds does ``/v2/health/ready`` say 200
and ``infer`` answer; a bundle that fails comes up not ready, says why at
``/v2/models/{name}`` and in the log, and never serves.

Starlette (not FastAPI) routes: the infer path is hot, and request validation is
done against the bundle's own specs, which FastAPI's per-route models would duplicate.
"""

from __future__ import annotations

import contextlib
import os
import time

from starlette.applications import Starlette
from starlette.routing import Route

from ..runtime.load import ServingRuntime
from . import handlers
from .state import ServeOptions, ServerState

ENV_OPTIONS = "PARITYBUNDLE_SERVE_OPTIONS"
ENV_LOG_LEVEL = "PARITYBUNDLE_SERVE_LOG_LEVEL"
_MODEL = "/v2/models/{name}"
ROUTES = [
    Route("/v2/health/live", handlers.live),
    Route("/v2/health/ready", handlers.ready),
    Route("/v2", handlers.server_metadata),
    Route(_MODEL, handlers.model_metadata),
    Route(_MODEL + "/versions/{version}", handlers.model_metadata),
    Route(_MODEL + "/ready", handlers.model_ready),
    Route(_MODEL + "/versions/{version}/ready", handlers.model_ready),
    Route(_MODEL + "/infer", handlers.infer, methods=["POST"]),
    Route(_MODEL + "/versions/{version}/infer", handlers.infer, methods=["POST"]),
    Route("/metrics", handlers.metrics),
]


def create_app(options: ServeOptions, runtime: ServingRuntime | None = None, started: float | None = None) -> Starlette:
    """The ASGI app serving one bundle; start-up checks run when the app starts.

    ``runtime``: the bundle already opened by :func:`~.state.open_serving_runtime` (``bundle
    serve`` does so before it binds its port), and ``started`` when that began.

    Example:
        >>> app = create_app(ServeOptions(bundle="artifacts/digits"))  # doctest: +SKIP
        >>> uvicorn.run(app, port=8080)  # doctest: +SKIP
    """
    state = ServerState(options)
    started = time.perf_counter() if started is None else started

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await state.start(started, runtime)
        yield
        await state.stop()

    app = Starlette(routes=ROUTES, lifespan=lifespan)
    app.state.server = state
    return app


def app_from_environment() -> Starlette:
    """The app factory uvicorn's worker processes call (options come as JSON in the environment).

    A worker is a fresh process: paritybundle's log level and format are set here as `bundle serve`
    set them in its own, so each worker's start-up verdict reaches the log."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("paritybundle").setLevel(os.environ.get(ENV_LOG_LEVEL, "info").upper())
    return create_app(ServeOptions.from_json(os.environ[ENV_OPTIONS]))
