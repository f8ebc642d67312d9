"""The ``bundle`` command: parse arguments, call the library, map errors to exit codes.

Each command body is one library call plus formatting. Expected failures are
:class:`~paritybundle.errors.ParityBundleError` subclasses: one sentence on
stderr and their exit code. Anything else is a bug: traceback and exit 70.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import functools
from collections.abc import Callable
from typing import Any

import typer

from .errors import EXIT_INTERNAL, EXIT_OK, EXIT_PARITY, ParityBundleError, UsageError

app = typer.Typer(
    name="bundle",
    help="paritybundle: export a model with its reference outputs, and prove serving reproduces them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _LazyConsole:
    """A rich Console made on first use: `bundle serve` prints nothing through rich, and
    importing it cost the server ~14 ms and 1.5 MiB before it could be ready."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


out = _LazyConsole(highlight=False, soft_wrap=False, width=160)
err = _LazyConsole(stderr=True, highlight=False)

BundleArg = Annotated[Path, typer.Argument(help="The bundle directory.", show_default=False)]
KeyOption = Annotated[Optional[Path], typer.Option(
    "--key", help="Public key: bundle.sig must verify with it (default: $PARITYBUNDLE_PUBLIC_KEY).")]
RequireSignatureOption = Annotated[bool, typer.Option(
    "--require-signature", help="Fail unless a public key is configured and the signature verifies.")]
EnvPolicyOption = Annotated[str, typer.Option(
    "--env-policy", help="Drift policy: strict refuses critical drift (exit 4) before inference; warn; ignore.")]


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror}); choose a writable path.") from None


def _tolerance(atol: float | None, rtol: float | None):
    from .manifest import Tolerance

    if atol is None and rtol is None:
        return None
    if atol is None or rtol is None:
        raise UsageError("--atol and --rtol go together; give both to override the bundle's tolerance.")
    if atol < 0 or rtol < 0:
        raise UsageError("--atol and --rtol must be >= 0.")
    return Tolerance(atol=atol, rtol=rtol)


def _output_tolerances(values: list[str]):
    from .manifest import Tolerance

    result = {}
    for value in values:
        try:
            name, atol, rtol = value.rsplit(":", 2)
            result[name] = Tolerance(atol=float(atol), rtol=float(rtol))
        except ValueError:
            raise UsageError(f"--output-tolerance {value!r} must look like NAME:ATOL:RTOL, e.g. logits:1e-4:1e-3.") from None
    return result


def command(name: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register a command whose expected failures become one sentence and their exit code."""

    def register(function: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                code = function(*args, **kwargs)
            except ParityBundleError as exc:
                from rich.text import Text

                # Text, not markup: messages quote lists and paths whose brackets are not rich markup.
                err.print(Text("error: ", style="bold red") + Text(str(exc)), soft_wrap=True)
                code = exc.exit_code
            except (typer.Exit, typer.Abort, KeyboardInterrupt):
                raise
            except Exception:
                traceback.print_exc()
                err.print("internal error: this is a bug in paritybundle; please report it with the traceback above.")
                code = EXIT_INTERNAL
            if code:
                raise typer.Exit(code)
            return code

        return app.command(name)(run)

    return register


@command("export")
def export_command(
    spec: Annotated[str, typer.Argument(help="path/to/file.py:name or module:name: an ExportSpec or a function returning one.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle directory to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at the output path.")] = False,
    max_samples: Annotated[Optional[int], typer.Option("--max-samples", help="Keep at most this many reference samples.")] = None,
) -> int:
    """Export a trained model, its reference set and environment as one bundle (atomically)."""
    from .training import export_spec, load_spec

    export_spec_obj = load_spec(spec)
    if max_samples is not None:
        if max_samples < 1:
            raise UsageError("--max-samples must be at least 1.")
        export_spec_obj.max_reference_samples = max_samples
    result = export_spec(export_spec_obj, output, force=force)
    m = result.manifest
    errors = ", ".join(f"{name} {e.max_abs:.2g}" for name, e in m.export_errors.items())
    out.print(f"exported {m.name} v{m.version} to {result.path}: {m.reference.samples} reference samples, "
              f"{len(m.files)} files; torch vs ONNX Runtime max abs error: {errors}")
    return EXIT_OK


@command("check")
def check_command(
    bundle: BundleArg,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON to this file ('-' for stdout).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="ONNX Runtime intra-op threads (0: automatic).")] = None,
    optimization: Annotated[Optional[str], typer.Option("--optimization", help="Graph optimization level: disable, basic, extended, all.")] = None,
    provider: Annotated[Optional[list[str]], typer.Option("--provider", help="Execution provider (repeatable, in priority order).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Reference samples per ONNX Runtime call.")] = 1024,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Override the absolute tolerance of every output (with --rtol).")] = None,
    rtol: Annotated[Optional[float], typer.Option("--rtol", help="Override the relative tolerance of every output (with --atol).")] = None,
    output_tolerance: Annotated[Optional[list[str]], typer.Option("--output-tolerance", help="NAME:ATOL:RTOL for one output (repeatable).")] = None,
    env_policy: EnvPolicyOption = "strict",
    url: Annotated[Optional[str], typer.Option("--url", help="Send the references to this live V2 endpoint instead, e.g. http://host:8080.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="With --url: the model name on the server (default: the bundle's).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="With --url: seconds to wait for each answer.")] = 30.0,
    references: Annotated[Optional[Path], typer.Option("--references", help="Use this ONNX test data directory (test_data_set_K/input_I.pb, output_O.pb; e.g. from `bundle testdata`) as the reference set.")] = None,
    junit_path: Annotated[Optional[Path], typer.Option("--junit", help="Also write a JUnit XML report (one test case per check) to this file.")] = None,
    html_path: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report (error plots per output) to this file.")] = None,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Verify integrity, run the reference inputs through ONNX Runtime (or a live --url), and judge parity."""
    try:
        report = _run_check(bundle, json_path, threads, optimization, provider, batch_size, atol, rtol, output_tolerance,
                            env_policy, url, model, timeout, references, key, require_signature,
                            histograms=html_path is not None)
    except ParityBundleError as exc:
        if junit_path is not None:  # CI systems still get a report saying why there is no verdict
            from .junit import junit_error

            _write_text(junit_path, junit_error("bundle check", str(exc), exc.exit_code))
        raise
    if junit_path is not None:
        from .junit import junit_xml

        _write_text(junit_path, junit_xml(report))
    if html_path is not None:
        from .html_report import check_page

        _write_text(html_path, check_page(report))
    _emit_report(report, json_path)
    return EXIT_OK if report.passed else EXIT_PARITY


def _run_check(bundle, json_path, threads, optimization, provider, batch_size, atol, rtol, output_tolerance, env_policy,
               url, model, timeout, references, key, require_signature, *, histograms: bool):
    from .checker import check, check_testdata, check_url, settings_from_manifest
    from .runtime import SessionSettings
    from .signing import resolve_key
    from .store import read_manifest

    public_key = resolve_key(key, require_signature)
    if url is not None and references is not None:
        raise UsageError("--url and --references are two different reference sources; pass one.")
    if url is not None:
        if threads is not None or optimization is not None or provider:
            raise UsageError("--threads, --optimization and --provider set local ONNX Runtime; they do not apply with --url.")
        return check_url(bundle, url, model=model, tolerance=_tolerance(atol, rtol),
                         per_output_tolerance=_output_tolerances(output_tolerance or []),
                         request_batch=min(batch_size, 256), timeout_s=timeout, public_key=public_key,
                         progress=_show_progress(json_path), histograms=histograms)
    if model is not None:
        raise UsageError("--model names the model on a live server; it goes with --url.")
    settings = None
    if threads is not None or optimization is not None or provider:
        recorded = settings_from_manifest(read_manifest(bundle))
        settings = SessionSettings(
            providers=tuple(provider) if provider else recorded.providers,
            graph_optimization_level=optimization or recorded.graph_optimization_level,
            intra_op_num_threads=recorded.intra_op_num_threads if threads is None else threads,
        )
    if references is not None:
        return check_testdata(bundle, references, settings=settings, tolerance=_tolerance(atol, rtol),
                              per_output_tolerance=_output_tolerances(output_tolerance or []), batch_size=batch_size,
                              env_policy=env_policy, public_key=public_key, histograms=histograms)
    return check(bundle, settings=settings, tolerance=_tolerance(atol, rtol),
                 per_output_tolerance=_output_tolerances(output_tolerance or []), batch_size=batch_size,
                 env_policy=env_policy, public_key=public_key, progress=_show_progress(json_path),
                 histograms=histograms)


def _show_progress(json_path: Path | None) -> bool:
    """A progress bar for people at a terminal; never in CI or when JSON goes to stdout."""
    import os

    return sys.stderr.isatty() and not os.environ.get("CI") and str(json_path) != "-"


def _emit_report(report, json_path: Path | None, render=None) -> None:
    """The report as JSON (to a file, or alone on stdout with '-'), and rendered for people (default: a check)."""
    from .report import render_check

    if json_path is not None:
        text = report.model_dump_json(indent=2) + "\n"
        if str(json_path) == "-":
            sys.stdout.write(text)
        else:
            _write_text(json_path, text)
    if json_path is None or str(json_path) != "-":
        (render or render_check)(report, out)


@command("testdata")
def testdata_command(
    bundle: BundleArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to write (model.onnx, test_data_set_K/, Polygraphy JSON).")],
    set_size: Annotated[Optional[int], typer.Option("--set-size", help="Samples per test_data_set_K (default: all in one set).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Write the reference set as ONNX test data (and Polygraphy JSON) beside the pipeline graph."""
    from .signing import resolve_key
    from .testdata import write_testdata

    result = write_testdata(bundle, output, set_size=set_size, force=force,
                            public_key=resolve_key(key, require_signature))
    out.print(f"wrote {result.path}: model.onnx, {result.sets} test data set(s) of {result.samples} samples, "
              "polygraphy_inputs.json, polygraphy_outputs.json")
    return EXIT_OK


@command("diff")
def diff_command(
    bundle_a: Annotated[Path, typer.Argument(help="A: the bundle in service (its tolerance judges).", metavar="A")],
    bundle_b: Annotated[Path, typer.Argument(help="B: the candidate that would replace it.", metavar="B")],
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the diff as JSON to this file ('-' for stdout).")] = None,
    html_path: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML page.")] = None,
    expect_change: Annotated[bool, typer.Option("--expect-change", help="B is meant to change outputs: report, exit 0 unless the specs are incompatible.")] = False,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Two bundles side by side (specs, preprocessing, graphs, tolerance, environment, provenance) and B on A's references."""
    from .diff import diff
    from .html_report import diff_page
    from .report import render_diff
    from .signing import resolve_key

    report = diff(bundle_a, bundle_b, expect_change=expect_change, public_key=resolve_key(key, require_signature))
    if html_path is not None:
        _write_text(html_path, diff_page(report))
    _emit_report(report, json_path, render_diff)
    return EXIT_OK if report.passed else EXIT_PARITY


def _print_build_line(line: str) -> None:
    if line.strip():
        err.print(line, markup=False, highlight=False, soft_wrap=True)


@command("build-image")
def build_image_command(
    bundle: BundleArg,
    tag: Annotated[Optional[str], typer.Option("-t", "--tag", help="Image tag, e.g. digits:1.")] = None,
    base_image: Annotated[str, typer.Option("--base-image", help="Base image with Python and venv (present locally or pullable).")] = "python:3.11-slim",
    wheelhouse: Annotated[Optional[Path], typer.Option("--wheelhouse", help="Use these wheels instead of downloading them (offline builds).")] = None,
    package: Annotated[Optional[str], typer.Option("--package", help="paritybundle's wheel or source directory (default: where it was installed from).")] = None,
    context: Annotated[Optional[Path], typer.Option("--context", help="Only write the build context (Dockerfile, bundle/, wheelhouse/) to this new directory, for your own builder.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Do not stream the build's output.")] = False,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Build the serving image through the Docker SDK; the build runs `bundle check` and fails unless parity holds."""
    from .container import build_context, build_image
    from .signing import resolve_key
    from .store import open_bundle

    public_key = resolve_key(key, require_signature)
    if context is not None:
        if context.exists():
            raise UsageError(f"{context} already exists; --context writes a new directory.")
        build_context(open_bundle(bundle, public_key), context, wheelhouse=wheelhouse, package=package)
        out.print(f"wrote the build context to {context}; build it with: docker build --build-arg BASE_IMAGE={base_image} "
                  f"-t TAG {context}", soft_wrap=True)
        return EXIT_OK
    if not tag:
        raise UsageError("build-image needs -t TAG (or --context DIR to only write the build context).")
    result = build_image(bundle, tag, base_image=base_image, wheelhouse=wheelhouse, package=package,
                         public_key=public_key, progress=None if quiet else _print_build_line)
    out.print(f"built {result.tag} ({result.image_id[:19]}) from {result.base_image}; parity held inside the image")
    return EXIT_OK


@command("verify")
def verify_command(bundle: BundleArg, key: KeyOption = None, require_signature: RequireSignatureOption = False) -> int:
    """Integrity only: the manifest, the signature (with --key) and every file's sha256; no inference."""
    from .checker import verify
    from .signing import resolve_key

    public_key = resolve_key(key, require_signature)
    verified = verify(bundle, public_key)
    total = sum(d.bytes for d in verified.manifest.files.values())
    signed = f"; signature verified with {public_key}" if public_key else ""
    out.print(f"{bundle}: {verified.manifest.name} v{verified.manifest.version}, "
              f"{len(verified.manifest.files)} files ({total:,} bytes) match bundle.json{signed}")
    return EXIT_OK


@command("inspect")
def inspect_command(
    bundle: BundleArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> int:
    """What is inside: specs, stages, tolerance, provenance, sizes (reads the manifest only)."""
    from .report import render_manifest
    from .store import read_manifest

    manifest = read_manifest(bundle)
    if as_json:
        sys.stdout.write(manifest.to_json())
    else:
        render_manifest(manifest, out)
    return EXIT_OK


@command("env")
def env_command(
    first: Annotated[str, typer.Argument(help="BUNDLE, or 'diff' followed by BUNDLE.", metavar="[diff] BUNDLE")],
    second: Annotated[Optional[Path], typer.Argument(hidden=True)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    env_policy: EnvPolicyOption = "warn",
) -> int:
    """`bundle env BUNDLE`: the training environment's lock. `bundle env diff BUNDLE`: its drift from here."""
    from .checker import environment_drift, read_lock, settings_from_manifest
    from .report import render_drift, render_lock
    from .store import open_bundle

    diff = first == "diff" and second is not None
    if not diff and second is not None:
        raise UsageError(f"unexpected argument {str(second)!r}; use `bundle env BUNDLE` or `bundle env diff BUNDLE`.")
    bundle = open_bundle(second if diff else Path(first))
    if not diff:
        lock = read_lock(bundle)
        if as_json:
            sys.stdout.write(lock.to_json())
        else:
            render_lock(lock, out)
        return EXIT_OK
    drift = environment_drift(bundle, env_policy, list(settings_from_manifest(bundle.manifest).providers))
    if as_json:
        sys.stdout.write(drift.model_dump_json(indent=2) + "\n")
    else:
        render_drift(drift, out)
    return EXIT_OK


@command("rehearse")
def rehearse_command(
    bundle: BundleArg,
    package: Annotated[Optional[str], typer.Option("--package", help="paritybundle's wheel or source dir (default: where it was installed from).")] = None,
    keep_venv: Annotated[Optional[Path], typer.Option("--keep-venv", help="Create the clean venv here and keep it.")] = None,
    python: Annotated[str, typer.Option("--python", help="Interpreter that creates the venv.")] = sys.executable,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the rehearsal report as JSON.")] = None,
) -> int:
    """Build a clean venv from requirements-serve.txt alone and run `bundle check` inside it."""
    from .rehearsal import rehearse
    from .report import render_check

    err.print(f"rehearsing {bundle}: clean venv, installing requirements-serve.txt ...")
    report = rehearse(bundle, python=python, package=package, keep=keep_venv)
    if json_path is not None:
        _write_text(json_path, report.model_dump_json(indent=2) + "\n")
    if report.check is not None:
        render_check(report.check, out)
    verdict = "PASSES" if report.passed else f"FAILS (exit {report.exit_code})"
    out.print(f"rehearsal {verdict}: Python {report.python}, venv {report.venv_seconds:.1f} s, install "
              f"{report.install_seconds:.1f} s, check {report.check_seconds:.1f} s"
              + (f"; {report.message}" if report.message else ""))
    return report.exit_code


@command("sign")
def sign_command(
    bundle: BundleArg,
    key: Annotated[Path, typer.Option("--key", help="Elliptic-curve private key (PEM) to sign with.")],
) -> int:
    """Verify the bundle, then write bundle.sig over bundle.json (which hashes every file)."""
    from .signing import sign

    written = sign(bundle, key)
    out.print(f"signed {bundle}: {written}")
    return EXIT_OK


@command("pack")
def pack_command(
    bundle: BundleArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="The archive to write (.tar.gz).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing archive.")] = False,
) -> int:
    """Write a verified bundle as one .tar.gz; every command accepts the archive in place of the directory."""
    from .archive import pack

    written = pack(bundle, output, force=force)
    out.print(f"packed {bundle} into {written} ({written.stat().st_size:,} bytes)")
    return EXIT_OK


@command("serve")
def serve_command(
    bundle: BundleArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option("--workers", help="Server processes; each checks parity before it is ready.")] = 1,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Rows per ONNX Runtime call when requests are batched (1: off).")] = 64,
    max_batch_delay_ms: Annotated[float, typer.Option("--max-batch-delay-ms", help="Wait this long for more rows before a partial batch.")] = 0.0,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body accepted (413 above).")] = 16 * 1024 * 1024,
    max_request_batch: Annotated[int, typer.Option("--max-request-batch", help="Largest batch one request may send (413 above).")] = 1024,
    threads: Annotated[Optional[int], typer.Option("--threads", help="ONNX Runtime intra-op threads (default: as validated).")] = None,
    env_policy: EnvPolicyOption = "strict",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")] = "info",
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Serve the bundle over the Open Inference Protocol (V2); ready only after parity holds."""
    from .serving.app import ServeOptions
    from .serving.server import serve
    from .signing import resolve_key

    public_key = resolve_key(key, require_signature)
    serve(ServeOptions(bundle=str(bundle), env_policy=env_policy, max_batch_size=max_batch_size,
                       max_batch_delay_ms=max_batch_delay_ms, max_body_bytes=max_body_bytes,
                       max_request_batch=max_request_batch, intra_op_num_threads=threads, public_key=public_key),
          host=host, port=port, workers=workers, log_level=log_level)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bundle``/``paritybundle``; exits with (or, given argv, returns) the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, prog_name="bundle")
        code = EXIT_OK
    except SystemExit as exc:  # typer's standalone mode ends every run with one
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
