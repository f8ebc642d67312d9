"""``bundle score``'s terminal rendering: every worker, where it ran, its gate and its rows."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .terminal import _text


def render_score(report, console: Console) -> None:
    """``bundle score``: one row per worker (where it ran, its gate, its rows), then the outcome."""
    table = Table(title=f"score: {report.bundle} v{report.bundle_version} on {report.engine}", title_justify="left")
    for column in ("worker", "node", "host", "onnxruntime", "cpu features", "gate", "gate s", "rows"):
        table.add_column(column, justify="right" if column in ("gate s", "rows") else "left")
    for w in report.workers:
        table.add_row(
            _text(w.worker),
            _text(w.node),
            _text(w.host),
            _text(w.onnxruntime_version or "-"),
            _text(" ".join(w.cpu_features) or "-"),
            Text("passed", style="green")
            if w.verdict == "passed"
            else Text(f"failed (exit {w.exit_code})", style="red"),
            f"{w.gate_seconds:.2f}",
            str(w.rows_scored),
        )
    if report.workers:
        console.print(table)
    if report.passed:
        console.print(
            _text(
                f"scored {report.rows_scored} rows into {report.output} in {report.duration_s:.1f}s; every "
                f"worker passed its parity gate first.",
                style="bold green",
            )
        )
    else:
        console.print(_text(f"nothing written to {report.output} (the error follows).", style="bold red"))
