"""``bundle serve``: the V2 server, ready only once parity holds (the work is :mod:`paritybundle.serving`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import EXIT_OK, UsageError
from ..serving.defaults import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_REQUEST_BATCH,
)
from .app import BundleArg, EnvPolicyOption, KeyOption, RequireSignatureOption, command
from .app import public_key as resolve_public_key


@command("serve")
def serve_command(
    bundle: BundleArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    workers: Annotated[
        int, typer.Option("--workers", help="Server processes; each checks parity before it is ready.")
    ] = 1,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", help="Rows per ONNX Runtime call when requests are batched (1: off).")
    ] = 64,
    max_batch_delay_ms: Annotated[
        float, typer.Option("--max-batch-delay-ms", help="Wait this long for more rows before a partial batch.")
    ] = 0.0,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", help="Largest request body accepted (413 above).")
    ] = DEFAULT_MAX_BODY_BYTES,
    max_request_batch: Annotated[
        int, typer.Option("--max-request-batch", help="Largest batch one request may send (413 above).")
    ] = DEFAULT_MAX_REQUEST_BATCH,
    max_inflight_bytes: Annotated[
        int,
        typer.Option(
            "--max-inflight-bytes", help="Request bytes read and decoded at once across connections (503 above)."
        ),
    ] = DEFAULT_MAX_INFLIGHT_BYTES,
    max_answer_bytes: Annotated[
        int,
        typer.Option(
            "--max-answer-bytes", help="Largest answer built for one request, judged before it is built (413 above)."
        ),
    ] = DEFAULT_MAX_ANSWER_BYTES,
    max_connections: Annotated[
        int, typer.Option("--max-connections", help="Connections or requests at once (503 above).")
    ] = DEFAULT_MAX_CONNECTIONS,
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout", help="Seconds for a request's headers to arrive; slower connections are closed."
        ),
    ] = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout",
            help="Seconds for a request's body to arrive after its headers; slower connections are closed.",
        ),
    ] = DEFAULT_BODY_TIMEOUT_S,
    threads: Annotated[
        int | None, typer.Option("--threads", help="ONNX Runtime intra-op threads (default: as validated).")
    ] = None,
    provider: Annotated[
        list[str] | None,
        typer.Option(
            "--provider",
            help="Execution provider (repeatable, in priority order; default: as validated), e.g. CUDAExecutionProvider.",
        ),
    ] = None,
    env_policy: EnvPolicyOption = "strict",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")] = "info",
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
    capture: Annotated[
        Path | None,
        typer.Option(
            "--capture",
            help="Write a sampled share of requests (inputs, served outputs, request id, time) as Parquet files to this directory, for `bundle check --references`, `bundle replay` and `bundle drift`.",
        ),
    ] = None,
    capture_rate: Annotated[
        float | None,
        typer.Option("--capture-rate", help="With --capture: the share of requests written (0-1]; default 1."),
    ] = None,
    capture_max_bytes: Annotated[
        int | None,
        typer.Option(
            "--capture-max-bytes", help="With --capture: complete a file once it holds this many bytes; default 64 MiB."
        ),
    ] = None,
    capture_max_total_bytes: Annotated[
        int | None,
        typer.Option(
            "--capture-max-total-bytes",
            help="With --capture: keep the directory's capture files under this, the oldest removed first; default 1 GiB.",
        ),
    ] = None,
    capture_rotate_seconds: Annotated[
        float | None,
        typer.Option(
            "--capture-rotate-seconds", help="With --capture: complete a file at least this often; default 60."
        ),
    ] = None,
    capture_queue: Annotated[
        int | None,
        typer.Option(
            "--capture-queue",
            help="With --capture: requests waiting to be written; past it they are dropped and counted; default 8192.",
        ),
    ] = None,
    capture_queue_bytes: Annotated[
        int | None,
        typer.Option(
            "--capture-queue-bytes",
            help="With --capture: bytes of requests waiting to be written; past it they are dropped and counted; default 64 MiB.",
        ),
    ] = None,
) -> int:
    """Serve the bundle over the Open Inference Protocol (V2); ready only after parity holds."""
    from ..serving.server import serve
    from ..serving.state import ServeOptions

    capture_settings = dict(
        rate=capture_rate,
        max_file_bytes=capture_max_bytes,
        max_total_bytes=capture_max_total_bytes,
        rotate_seconds=capture_rotate_seconds,
        queue_requests=capture_queue,
        queue_bytes=capture_queue_bytes,
    )
    given = {name: value for name, value in capture_settings.items() if value is not None}
    captured = None
    if capture is not None:
        captured = dict(directory=str(capture), **given)
    elif given:
        raise UsageError("the --capture-* options set how traffic is captured; add --capture DIR, or drop them.")

    serve(
        ServeOptions(
            bundle=str(bundle),
            env_policy=env_policy,
            max_batch_size=max_batch_size,
            max_batch_delay_ms=max_batch_delay_ms,
            max_body_bytes=max_body_bytes,
            max_request_batch=max_request_batch,
            intra_op_num_threads=threads,
            providers=list(provider) if provider else None,
            public_key=resolve_public_key(key, require_signature),
            max_inflight_bytes=max_inflight_bytes,
            max_answer_bytes=max_answer_bytes,
            capture=captured,
        ),
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
    )
    return EXIT_OK
