"""Commands that write something: ``export``, ``testdata``, ``pack``, ``sign``, ``rehearse``, ``build-image``, ``pull``."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from ..errors import EXIT_OK, ParityBundleError, UsageError
from ..reports.strength import approximation_lines
from .app import BundleArg, KeyOption, RequireSignatureOption, command, err, out, public_key, write_text


@command("export")
def export_command(
    spec: Annotated[
        str, typer.Argument(help="path/to/file.py:name or module:name: an ExportSpec or a function returning one.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle directory to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at the output path.")] = False,
    max_samples: Annotated[
        int | None, typer.Option("--max-samples", help="Keep at most this many reference samples.")
    ] = None,
    require_power: Annotated[
        bool,
        typer.Option(
            "--require-power", help="Refuse (exit 2) unless the reference set detects a 1% weight perturbation."
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "-v",
            "--verbose",
            help="On failure, also print the full trace of the underlying error (torch's exporter, the training code).",
        ),
    ] = False,
    log_to_mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow",
            help="Also log the bundle (files, params, metrics, tags) to MLflow: the active run, or a new one, on the tracking server MLFLOW_TRACKING_URI names.",
        ),
    ] = False,
    references_from: Annotated[
        Path | None,
        typer.Option(
            "--references-from",
            help="Draw the reference rows from traffic captured by `bundle serve --capture` (instead of the spec's reference_inputs), with the same coverage rules.",
        ),
    ] = None,
    serving_graph: Annotated[
        Path | None,
        typer.Option(
            "--serving-graph",
            help="Serve this .onnx instead of the research graph: an approximation by design (int8, fp16) of the same model, judged by decisions and an error budget (the spec's serving_model).",
        ),
    ] = None,
    score_error: Annotated[
        str | None,
        typer.Option(
            "--score-error",
            metavar="P50,P99,MAX",
            help="With a serving graph: the absolute-error budget of every float output (the spec's score_error).",
        ),
    ] = None,
    min_decision_agreement: Annotated[
        float | None,
        typer.Option(
            "--min-decision-agreement",
            help="The least share of decisions (argmax, labels) that must agree with research, e.g. 0.99.",
        ),
    ] = None,
) -> int:
    """Export a trained model, its reference set and environment as one bundle (atomically)."""
    from ..training import export_spec, load_spec

    if verbose:
        logging.getLogger("paritybundle").setLevel(logging.INFO)
    if log_to_mlflow:  # a tracking server that is down is exit 2 before anything is exported
        from ..mlflow import _mlflow, _reachable

        _reachable(_mlflow())
    try:
        export_spec_obj = load_spec(spec)
        if max_samples is not None:
            if max_samples < 1:
                raise UsageError("--max-samples must be at least 1.")
            export_spec_obj.max_reference_samples = max_samples
        if require_power:
            export_spec_obj.require_power = True
        if serving_graph is not None:
            export_spec_obj.serving_model = serving_graph
        if score_error is not None:
            export_spec_obj.score_error = _error_budget(score_error)
        if min_decision_agreement is not None:
            export_spec_obj.min_decision_agreement = min_decision_agreement
        if references_from is not None:
            from ..training.from_traffic import with_references_from

            export_spec_obj = with_references_from(export_spec_obj, references_from)
        result = export_spec(export_spec_obj, output, force=force)
    except ParityBundleError as exc:
        if verbose and exc.__cause__ is not None:
            # The one-sentence error follows (the command's handler); the trace says where it arose.
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        raise
    m = result.manifest
    errors = ", ".join(f"{name} {e.max_abs:.2g}" for name, e in m.export_errors.items())
    out.print(
        f"exported {m.name} v{m.version} to {result.path}: {m.reference.samples} reference samples, "
        f"{len(m.files)} files; {m.export_error_label()} max abs error: {errors}"
    )
    for line in approximation_lines(m.tolerance):
        out.print(line)
    if m.power is not None:
        out.print(m.power.sentence())
    if log_to_mlflow:
        from ..mlflow import log_bundle

        run_id = log_bundle(result.path)
        out.print(f"logged to MLflow run {run_id}")
    return EXIT_OK


def _error_budget(text: str) -> object:
    """``P50,P99,MAX`` as an ErrorBudget, or a usage error saying the form."""
    from pydantic import ValidationError

    from ..bundle.manifest import ErrorBudget

    try:
        p50, p99, largest = (float(part) for part in text.split(","))
        return ErrorBudget(p50=p50, p99=p99, max=largest)
    except (ValueError, ValidationError):
        raise UsageError(
            f"--score-error {text!r} must be three finite numbers P50,P99,MAX with "
            "0 <= P50 <= P99 <= MAX, e.g. 0.02,0.1,0.5."
        ) from None


@command("testdata")
def testdata_command(
    bundle: BundleArg,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Directory to write (model.onnx, test_data_set_K/, Polygraphy JSON).")
    ],
    set_size: Annotated[
        int | None, typer.Option("--set-size", help="Samples per test_data_set_K (default: all in one set).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Write the reference set as ONNX test data (and Polygraphy JSON) beside the pipeline graph."""
    from ..commands.testdata import write_testdata

    result = write_testdata(
        bundle, output, set_size=set_size, force=force, public_key=public_key(key, require_signature)
    )
    out.print(
        f"wrote {result.path}: model.onnx, {result.sets} test data set(s) of {result.samples} samples, "
        "polygraphy_inputs.json, polygraphy_outputs.json"
    )
    return EXIT_OK


@command("pack")
def pack_command(
    bundle: BundleArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="The archive to write (.tar.gz).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing archive.")] = False,
) -> int:
    """Write a verified bundle as one .tar.gz; every command accepts the archive in place of the directory."""
    from ..commands.pack import pack

    written = pack(bundle, output, force=force)
    out.print(f"packed {bundle} into {written} ({written.stat().st_size:,} bytes)")
    return EXIT_OK


@command("sign")
def sign_command(
    bundle: BundleArg,
    key: Annotated[Path, typer.Option("--key", help="Elliptic-curve private key (PEM) to sign with.")],
) -> int:
    """Verify the bundle, then write bundle.sig over bundle.json (which hashes every file)."""
    from ..commands.sign import sign

    written = sign(bundle, key)
    out.print(f"signed {bundle}: {written}")
    return EXIT_OK


@command("rehearse")
def rehearse_command(
    bundle: BundleArg,
    package: Annotated[
        str | None,
        typer.Option("--package", help="paritybundle's wheel or source dir (default: where it was installed from)."),
    ] = None,
    keep_venv: Annotated[
        Path | None, typer.Option("--keep-venv", help="Create the clean venv here and keep it.")
    ] = None,
    python: Annotated[str, typer.Option("--python", help="Interpreter that creates the venv.")] = sys.executable,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the rehearsal report as JSON.")] = None,
) -> int:
    """Build a clean venv from requirements-serve.txt alone and run `bundle check` inside it."""
    from ..commands.rehearsal import rehearse
    from ..reports.json_report import to_json
    from ..reports.terminal import render_check

    err.print(f"rehearsing {bundle}: clean venv, installing requirements-serve.txt ...")
    report = rehearse(bundle, python=python, package=package, keep=keep_venv)
    if json_path is not None:
        write_text(json_path, to_json(report))
    if report.check is not None:
        render_check(report.check, out)
    verdict = "PASSES" if report.passed else f"FAILS (exit {report.exit_code})"
    out.print(
        f"rehearsal {verdict}: Python {report.python}, venv {report.venv_seconds:.1f} s, install "
        f"{report.install_seconds:.1f} s, check {report.check_seconds:.1f} s"
        + (f"; {report.message}" if report.message else "")
    )
    return report.exit_code


def _print_build_line(line: str) -> None:
    if line.strip():
        err.print(line, markup=False, highlight=False, soft_wrap=True)


@command("build-image")
def build_image_command(
    bundle: BundleArg,
    tag: Annotated[str | None, typer.Option("-t", "--tag", help="Image tag, e.g. digits:1.")] = None,
    base_image: Annotated[
        str, typer.Option("--base-image", help="Base image with Python and venv (present locally or pullable).")
    ] = "python:3.11-slim",
    wheelhouse: Annotated[
        Path | None, typer.Option("--wheelhouse", help="Use these wheels instead of downloading them (offline builds).")
    ] = None,
    package: Annotated[
        str | None,
        typer.Option(
            "--package", help="paritybundle's wheel or source directory (default: where it was installed from)."
        ),
    ] = None,
    context: Annotated[
        Path | None,
        typer.Option(
            "--context",
            help="Only write the build context (Dockerfile, bundle/, wheelhouse/) to this new directory, for your own builder.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Do not stream the build's output.")] = False,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Build the serving image through the Docker SDK; the build runs `bundle check` and fails unless parity holds."""
    from ..commands.container import build_image, write_context

    key_path = public_key(key, require_signature)
    if context is not None:
        write_context(bundle, context, wheelhouse=wheelhouse, package=package, public_key=key_path)
        out.print(
            f"wrote the build context to {context}; build it with: docker build --build-arg BASE_IMAGE={base_image} "
            f"-t TAG {context}",
            soft_wrap=True,
        )
        return EXIT_OK
    if not tag:
        raise UsageError("build-image needs -t TAG (or --context DIR to only write the build context).")
    result = build_image(
        bundle,
        tag,
        base_image=base_image,
        wheelhouse=wheelhouse,
        package=package,
        public_key=key_path,
        progress=None if quiet else _print_build_line,
    )
    out.print(f"built {result.tag} ({result.image_id[:19]}) from {result.base_image}; parity held inside the image")
    return EXIT_OK


@command("pull")
def pull_command(
    uri: Annotated[
        str,
        typer.Argument(help="models:/NAME/VERSION (or models:/NAME@ALIAS) or runs:/RUN_ID/PATH of a logged bundle."),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle directory to write (must not exist).")],
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Download a bundle from MLflow (the registry or a run) and verify it before saying it is there."""
    from ..mlflow import pull

    bundle = pull(uri, output, public_key=public_key(key, require_signature))
    out.print(
        f"pulled {bundle.manifest.name} v{bundle.manifest.version} from {uri} to {output}: "
        f"{len(bundle.manifest.files)} files verified"
    )
    return EXIT_OK
