"""``bundle check``, ``replay`` and ``drift``: the commands that judge references or traffic."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ..errors import EXIT_OK, EXIT_PARITY, ParityBundleError, UsageError
from .app import (
    BundleArg,
    EnvPolicyOption,
    JsonOption,
    KeyOption,
    RequireSignatureOption,
    command,
    emit_report,
    write_text,
)
from .app import public_key as resolve_public_key


def _tolerance(atol: float | None, rtol: float | None):
    from ..bundle.manifest import Tolerance

    if atol is None and rtol is None:
        return None
    if atol is None or rtol is None:
        raise UsageError("--atol and --rtol go together; give both to override the bundle's tolerance.")
    if not (math.isfinite(atol) and math.isfinite(rtol)) or atol < 0 or rtol < 0:
        raise UsageError("--atol and --rtol must be finite numbers >= 0.")
    return Tolerance(atol=atol, rtol=rtol)


def _output_tolerances(values: list[str]):
    from ..bundle.manifest import Tolerance

    result = {}
    for value in values:
        try:
            name, atol, rtol = value.rsplit(":", 2)
            atol_value, rtol_value = float(atol), float(rtol)
            if not (math.isfinite(atol_value) and math.isfinite(rtol_value)) or atol_value < 0 or rtol_value < 0:
                raise ValueError
            result[name] = Tolerance(atol=atol_value, rtol=rtol_value)
        except ValueError:
            raise UsageError(
                f"--output-tolerance {value!r} must look like NAME:ATOL:RTOL with finite numbers >= 0, "
                "e.g. logits:1e-4:1e-3."
            ) from None
    return result


def _show_progress(json_path: Path | None) -> bool:
    """A progress bar for people at a terminal; never in CI or when JSON goes to stdout."""
    return sys.stderr.isatty() and not os.environ.get("CI") and str(json_path) != "-"


AtolOption = Annotated[
    float | None, typer.Option("--atol", help="Override the absolute tolerance of every output (with --rtol).")
]
RtolOption = Annotated[
    float | None, typer.Option("--rtol", help="Override the relative tolerance of every output (with --atol).")
]
OutputToleranceOption = Annotated[
    list[str] | None, typer.Option("--output-tolerance", help="NAME:ATOL:RTOL for one output (repeatable).")
]
JunitOption = Annotated[
    Path | None, typer.Option("--junit", help="Also write a JUnit XML report (one test case per check) to this file.")
]
HtmlOption = Annotated[
    Path | None,
    typer.Option("--html", help="Also write a self-contained HTML report (error plots per output) to this file."),
]
EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        help="local, or ray: judge captured traffic in shards on Ray workers (each gated first), statistics merged exactly.",
    ),
]
RayAddressOption = Annotated[
    str | None, typer.Option("--ray-address", help="With --engine ray: the cluster (default: start a local Ray).")
]
WorkersOption = Annotated[int, typer.Option("--workers", help="With --engine ray: shards judged at once.")]


@contextlib.contextmanager
def _junit_on_error(junit_path: Path | None, command_name: str) -> Iterator[None]:
    """A verdict that could not be reached still leaves CI systems a JUnit report saying why (``--junit``)."""
    try:
        yield
    except ParityBundleError as exc:
        if junit_path is not None:
            from ..reports.junit import junit_error

            write_text(junit_path, junit_error(command_name, str(exc), exc.exit_code))
        raise


@command("check")
def check_command(
    bundle: BundleArg,
    json_path: JsonOption = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="ONNX Runtime intra-op threads (0: automatic).")
    ] = None,
    optimization: Annotated[
        str | None, typer.Option("--optimization", help="Graph optimization level: disable, basic, extended, all.")
    ] = None,
    provider: Annotated[
        list[str] | None, typer.Option("--provider", help="Execution provider (repeatable, in priority order).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Reference samples per ONNX Runtime call.")] = 1024,
    atol: AtolOption = None,
    rtol: RtolOption = None,
    output_tolerance: OutputToleranceOption = None,
    env_policy: EnvPolicyOption = "strict",
    url: Annotated[
        str | None,
        typer.Option("--url", help="Send the references to this live V2 endpoint instead, e.g. http://host:8080."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="With --url: the model name on the server (default: the bundle's).")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            help="With --url: seconds the endpoint has for all the check's requests together, whatever it sends.",
        ),
    ] = 300.0,
    references: Annotated[
        Path | None,
        typer.Option(
            "--references",
            help="Use this ONNX test data directory (test_data_set_K/input_I.pb, output_O.pb; e.g. from `bundle testdata`), or traffic captured by `bundle serve --capture` (this runtime against what production served), as the reference set.",
        ),
    ] = None,
    junit_path: JunitOption = None,
    html_path: HtmlOption = None,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
    mlflow_run: Annotated[
        str | None,
        typer.Option(
            "--mlflow-run", help="Also log the reports, per-output metrics and the verdict to this MLflow run."
        ),
    ] = None,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = 2,
) -> int:
    """Verify integrity, run the reference inputs through ONNX Runtime (or a live --url), and judge parity."""
    with _junit_on_error(junit_path, "bundle check"):
        cluster = _cluster(engine, ray_address, workers)
        if cluster is not None and (references is None or url is not None):
            raise UsageError(
                "--engine ray shards captured traffic across workers: pass --references CAPTURE "
                "(the bundle's own reference set is checked on one machine)."
            )
        report = _run_check(
            bundle,
            threads,
            optimization,
            provider,
            batch_size,
            atol,
            rtol,
            output_tolerance,
            env_policy,
            url,
            model,
            timeout,
            references,
            resolve_public_key(key, require_signature),
            progress=_show_progress(json_path),
            histograms=html_path is not None,
            cluster=cluster,
        )
    if mlflow_run is not None:
        from ..mlflow import log_check

        log_check(report, mlflow_run)
    return _emit_check(report, json_path, junit_path, html_path)


def _cluster(engine: str, address: str | None, workers: int) -> dict | None:
    """Where a check of captured traffic runs: None for this process, or the Ray options."""
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine!r} is not local or ray.")
    if workers < 1:
        raise UsageError("--workers must be at least 1.")
    if engine == "local":
        if address is not None:
            raise UsageError("--ray-address goes with --engine ray.")
        return None
    return {"address": address, "workers": workers}


def _emit_check(report, json_path: Path | None, junit_path: Path | None, html_path: Path | None) -> int:
    """A check's report to the terminal (or --json) and the requested files; its exit code."""
    from ..reports.terminal import render_check

    if junit_path is not None:
        from ..reports.junit import junit_xml

        write_text(junit_path, junit_xml(report))
    if html_path is not None:
        from ..reports.html_page import check_page

        write_text(html_path, check_page(report))
    emit_report(report, json_path, render_check)
    return EXIT_OK if report.passed else EXIT_PARITY


@command("replay")
def replay_command(
    spec: Annotated[
        str, typer.Argument(help="path/to/file.py:name or module:name: the export spec the bundle was made from.")
    ],
    capture: Annotated[
        Path, typer.Argument(help="Traffic captured by `bundle serve --capture` (its directory, or one .parquet file).")
    ],
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="The bundle whose tolerance policy judges (verified); default: the manifest the server recorded in the capture.",
        ),
    ] = None,
    atol: AtolOption = None,
    rtol: RtolOption = None,
    output_tolerance: OutputToleranceOption = None,
    json_path: JsonOption = None,
    junit_path: JunitOption = None,
    html_path: HtmlOption = None,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = 2,
) -> int:
    """Run the research path (torch) again on captured production inputs and judge what production served."""
    with _junit_on_error(junit_path, "bundle replay"):
        cluster = _cluster(engine, ray_address, workers)
        options = dict(
            bundle=bundle,
            tolerance=_tolerance(atol, rtol),
            per_output_tolerance=_output_tolerances(output_tolerance or []),
            public_key=resolve_public_key(key, require_signature),
            histograms=html_path is not None,
        )
        if cluster is None:
            from ..training.replay import replay

            report = replay(spec, capture, **options)
        else:
            from ..commands.cluster_checks import replay_on_ray

            report = replay_on_ray(spec, capture, **options, **cluster)
    return _emit_check(report, json_path, junit_path, html_path)


def _run_check(
    bundle,
    threads,
    optimization,
    provider,
    batch_size,
    atol,
    rtol,
    output_tolerance,
    env_policy,
    url,
    model,
    timeout,
    references,
    key,
    *,
    progress: bool,
    histograms: bool,
    cluster: dict | None = None,
):
    """One library call, chosen by where the references go: a live endpoint, test data, or the bundle's own."""
    tolerances = dict(
        tolerance=_tolerance(atol, rtol),
        per_output_tolerance=_output_tolerances(output_tolerance or []),
        public_key=key,
        histograms=histograms,
    )
    if url is not None and references is not None:
        raise UsageError("--url and --references are two different reference sources; pass one.")
    if url is not None:
        if threads is not None or optimization is not None or provider:
            raise UsageError(
                "--threads, --optimization and --provider set local ONNX Runtime; they do not apply with --url."
            )
        from ..commands.endpoint import check_url

        return check_url(
            bundle,
            url,
            model=model,
            request_batch=min(batch_size, 256),
            timeout_s=timeout,
            progress=progress,
            **tolerances,
        )
    if model is not None:
        raise UsageError("--model names the model on a live server; it goes with --url.")
    from ..check.checks import check, check_testdata
    from ..runtime.session import SessionOverrides

    settings = SessionOverrides(
        providers=tuple(provider) if provider else None,
        graph_optimization_level=optimization,
        intra_op_num_threads=threads,
    )
    if references is not None:
        from ..runtime.capture import is_capture

        if is_capture(references) and cluster is not None:  # shards judged on Ray workers, merged here
            from ..commands.cluster_checks import check_capture_on_ray

            return check_capture_on_ray(
                bundle,
                references,
                settings=settings,
                batch_size=batch_size,
                env_policy=env_policy,
                **tolerances,
                **cluster,
            )
        if cluster is not None:
            raise UsageError(
                f"--engine ray shards captured traffic; {references} is not a capture from `bundle serve --capture`."
            )
        if is_capture(references):  # traffic from `bundle serve --capture`: this runtime vs what production served
            from ..check.traffic import check_capture

            return check_capture(
                bundle, references, settings=settings, batch_size=batch_size, env_policy=env_policy, **tolerances
            )
        return check_testdata(
            bundle, references, settings=settings, batch_size=batch_size, env_policy=env_policy, **tolerances
        )
    return check(
        bundle, settings=settings, batch_size=batch_size, env_policy=env_policy, progress=progress, **tolerances
    )


@command("drift")
def drift_command(
    bundle: BundleArg,
    capture: Annotated[
        Path, typer.Argument(help="Traffic captured by `bundle serve --capture` (its directory, or one .parquet file).")
    ],
    json_path: JsonOption = None,
    html_path: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write a self-contained HTML page (per-column histograms, reference vs production) to this file.",
        ),
    ] = None,
    max_psi: Annotated[
        float, typer.Option("--max-psi", help="Population stability index past which a column has drifted.")
    ] = 0.25,
    max_unseen: Annotated[
        float, typer.Option("--max-unseen", help="Share of samples with categories the reference set never ran.")
    ] = 0.05,
    max_out_of_range: Annotated[
        float,
        typer.Option("--max-out-of-range", help="Share of samples outside the reference set's (or the fitted) range."),
    ] = 0.05,
    max_nan_increase: Annotated[
        float, typer.Option("--max-nan-increase", help="Rise in the share of missing values over the reference set's.")
    ] = 0.05,
    max_class_shift: Annotated[
        float,
        typer.Option(
            "--max-class-shift", help="Total variation between predicted-class mixes, production vs research."
        ),
    ] = 0.25,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Are production's inputs still inside what the reference set proves? Exit 1 past any threshold."""
    from ..check.input_drift import DriftThresholds, input_drift
    from ..reports.terminal import render_input_drift

    thresholds = DriftThresholds(
        max_psi=max_psi,
        max_unseen_share=max_unseen,
        max_out_of_range_share=max_out_of_range,
        max_nan_increase=max_nan_increase,
        max_class_shift=max_class_shift,
    )
    report = input_drift(bundle, capture, thresholds=thresholds, public_key=resolve_public_key(key, require_signature))
    if html_path is not None:
        from ..reports.drift_page import drift_page

        write_text(html_path, drift_page(report))
    emit_report(report, json_path, render_input_drift)
    return EXIT_OK if report.passed else EXIT_PARITY
