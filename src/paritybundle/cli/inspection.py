"""Commands that read a bundle without serving it: ``verify``, ``inspect``, ``env``, ``diff``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import EXIT_OK, EXIT_PARITY, UsageError
from .app import (
    BundleArg,
    EnvPolicyOption,
    JsonOption,
    KeyOption,
    RequireSignatureOption,
    command,
    emit_report,
    out,
    public_key,
    write_json,
    write_text,
)


@command("verify")
def verify_command(bundle: BundleArg, key: KeyOption = None, require_signature: RequireSignatureOption = False) -> int:
    """Integrity only: the manifest, the signature (with --key) and every file's sha256; no inference."""
    from ..bundle.store import verify

    key_path = public_key(key, require_signature)
    verified = verify(bundle, key_path)
    total = sum(d.bytes for d in verified.manifest.files.values())
    signed = f"; signature verified with {key_path}" if key_path else ""
    out.print(
        f"{bundle}: {verified.manifest.name} v{verified.manifest.version}, "
        f"{len(verified.manifest.files)} files ({total:,} bytes) match bundle.json{signed}"
    )
    return EXIT_OK


@command("inspect")
def inspect_command(
    bundle: BundleArg,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Write the manifest as JSON to this file ('-' for stdout) instead of the table."),
    ] = None,
) -> int:
    """What is inside: specs, stages, tolerance, provenance, sizes (reads the manifest only)."""
    from ..bundle.store import read_manifest
    from ..reports.terminal import render_manifest

    manifest = read_manifest(bundle)
    if json_path is not None:
        write_json(manifest.to_json(), json_path)
    else:
        render_manifest(manifest, out)
    return EXIT_OK


@command("env")
def env_command(
    first: Annotated[str, typer.Argument(help="BUNDLE, or 'diff' followed by BUNDLE.", metavar="[diff] BUNDLE")],
    second: Annotated[Path | None, typer.Argument(hidden=True)] = None,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Write the lock (or drift) as JSON to this file ('-' for stdout) instead of the table."
        ),
    ] = None,
    env_policy: EnvPolicyOption = "warn",
) -> int:
    """`bundle env BUNDLE`: the training environment's lock. `bundle env diff BUNDLE`: its drift from here."""
    from ..bundle.store import open_bundle
    from ..reports.terminal import render_drift, render_lock
    from ..runtime.load import bundle_drift, read_lock

    diff = first == "diff" and second is not None
    if not diff and second is not None:
        raise UsageError(f"unexpected argument {str(second)!r}; use `bundle env BUNDLE` or `bundle env diff BUNDLE`.")
    bundle = open_bundle(second if second is not None and diff else Path(first))
    if diff:
        drift = bundle_drift(bundle, env_policy)
        text, show = drift.model_dump_json(indent=2), lambda: render_drift(drift, out)
    else:
        lock = read_lock(bundle)
        text, show = lock.model_dump_json(indent=2), lambda: render_lock(lock, out)
    if json_path is not None:
        write_json(text + "\n", json_path)
    else:
        show()
    return EXIT_OK


@command("diff")
def diff_command(
    bundle_a: Annotated[Path, typer.Argument(help="A: the bundle in service (its tolerance judges).", metavar="A")],
    bundle_b: Annotated[Path, typer.Argument(help="B: the candidate that would replace it.", metavar="B")],
    json_path: JsonOption = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML page.")] = None,
    expect_change: Annotated[
        bool,
        typer.Option(
            "--expect-change", help="B is meant to change outputs: report, exit 0 unless the specs are incompatible."
        ),
    ] = False,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Two bundles side by side (specs, preprocessing, graphs, tolerance, environment, provenance) and B on A's references."""
    from ..commands.diff import diff
    from ..reports.diff_terminal import render_diff
    from ..reports.html_page import diff_page

    report = diff(bundle_a, bundle_b, expect_change=expect_change, public_key=public_key(key, require_signature))
    if html_path is not None:
        write_text(html_path, diff_page(report))
    emit_report(report, json_path, render_diff)
    return EXIT_OK if report.passed else EXIT_PARITY
