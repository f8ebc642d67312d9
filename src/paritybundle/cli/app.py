"""The shell of the ``bundle`` command: the typer app, one error -> exit-code mapping, shared options.

Each command body is one library call plus formatting. Expected failures are
:class:`~paritybundle.errors.ParityBundleError` subclasses: one sentence on stderr and
their exit code. Anything else is a bug: traceback and exit 70.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from typer.core import TyperCommand, TyperGroup

from ..errors import EXIT_INTERNAL, EXIT_OK, ParityBundleError, UsageError
from ..version import __version__

if TYPE_CHECKING:
    from rich.console import Console


def _switches_without_a_type(params: list[Any]) -> list[Any]:
    """typer's help shows a switch as ``--force <bool>``, which reads as needing a value; a switch (and
    ``--help``, ``--version``) takes none, so its type column stays empty."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _switches_without_a_type(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _switches_without_a_type(super().get_params(ctx))


app = typer.Typer(
    name="bundle",
    cls=_Group,
    help="paritybundle: export a model with its reference outputs, and prove serving reproduces them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"paritybundle {__version__}\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """paritybundle: export a model with its reference outputs, and prove serving reproduces them."""


class _LazyConsole:
    """A rich Console made on first use: `bundle serve` prints nothing through rich, and
    importing it cost the server ~14 ms and 1.5 MiB before it could be ready."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from ..reports.terminal import SafeConsole

            self._console = SafeConsole(**self._options)
        return getattr(self._console, name)


# markup=False: every string printed is literal. Paths, manifest fields and messages quoting them
# may hold "[...]" (a directory named "[/oops]", a version "[/x]"), which rich would read as markup
# (a MarkupError, or text silently eaten); control characters are stripped by rich itself.
out = cast("Console", _LazyConsole(highlight=False, soft_wrap=False, width=160, markup=False))
err = cast("Console", _LazyConsole(stderr=True, highlight=False, markup=False))

BundleArg = Annotated[Path, typer.Argument(help="The bundle directory.", show_default=False)]
KeyOption = Annotated[
    Path | None,
    typer.Option("--key", help="Public key: bundle.sig must verify with it (default: $PARITYBUNDLE_PUBLIC_KEY)."),
]
RequireSignatureOption = Annotated[
    bool, typer.Option("--require-signature", help="Fail unless a public key is configured and the signature verifies.")
]
EnvPolicyOption = Annotated[
    str,
    typer.Option(
        "--env-policy", help="Drift policy: strict refuses critical drift (exit 4) before inference; warn; ignore."
    ),
]
JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Also write the report as JSON to this file ('-' for stdout).")
]


def public_key(key: Path | None, require: bool) -> str | None:
    """The key to verify signatures with (``--key`` or the environment), required with ``--require-signature``."""
    from ..bundle.signature import resolve_key

    return resolve_key(key, require)


def write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror}); choose a writable path.") from None


def emit_report(report: Any, json_path: Path | None, render: Callable[[Any, Any], None]) -> None:
    """The report as JSON (to a file, or alone on stdout with '-'), and rendered for people."""
    from ..reports.json_report import to_json

    if json_path is not None:
        write_json(to_json(report), json_path)
    if json_path is None or str(json_path) != "-":
        render(report, out)


def write_json(text: str, json_path: Path) -> None:
    """JSON alone on stdout for ``--json -``, else into the file ``--json`` names (the same for every command)."""
    if str(json_path) == "-":
        sys.stdout.write(text)
    else:
        write_text(json_path, text)


def command(name: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register a command whose expected failures become one sentence and their exit code."""

    def register(function: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                code = function(*args, **kwargs)
            except ParityBundleError as exc:
                from rich.text import Text

                from ..bundle.strict import printable

                # Text, not markup: messages quote lists and paths whose brackets are not rich markup.
                err.print(Text("error: ", style="bold red") + Text(printable(exc)), soft_wrap=True)
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

        return app.command(name, cls=_Command)(run)

    return register


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
