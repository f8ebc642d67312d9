"""``bundle diff A B`` on the terminal (rich): compatibility, what changed, and what it did to outputs."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .terminal import _SEVERITY_STYLE, _share, _text, number_text


def _field_table(title: str, changes, a_label: str = "A", b_label: str = "B") -> Table:
    table = Table(title=title, title_justify="left")
    for heading in ("what", a_label, b_label):
        table.add_column(heading)
    for change in changes:
        table.add_row(
            _text(change.what),
            _text(change.a if change.a is not None else "-"),
            _text(change.b if change.b is not None else "-"),
        )
    return table


def render_diff(report, console: Console) -> None:
    """`bundle diff A B`: compatibility first, then what changed, then what it did to outputs."""
    a, b = report.a, report.b
    console.print(
        _text(f"diff: A = {a.name} v{a.version} ({a.path})  ->  B = {b.name} v{b.version} ({b.path})", style="bold")
    )
    compat = report.compatibility
    if compat.compatible:
        console.print(_text("compatible: B can replace A behind the same endpoint", style="green"))
    else:
        console.print(_text("INCOMPATIBLE: B cannot replace A behind the same endpoint", style="bold red"))
        for problem in compat.problems:
            console.print(_text(f"  {problem}", style="red"))
    for note in compat.notes:
        console.print(_text(f"  note: {note}", style="yellow"))
    if report.specs:
        table = Table(title="input/output specs that differ", title_justify="left")
        for heading in ("kind", "name", "A", "B", "breaks A's clients", "detail"):
            table.add_column(heading)
        for d in report.specs:

            def text(spec) -> Text:
                return _text("-" if spec is None else f"{spec.dtype}[{', '.join(map(str, spec.shape))}]")

            table.add_row(
                d.kind,
                _text(d.name),
                text(d.a),
                text(d.b),
                _text("yes", style="red") if d.breaking else "no",
                _text(d.detail),
            )
        console.print(table)
    else:
        console.print("input/output specs: identical")
    pre = report.preprocessing
    if pre is not None:
        if not pre.structure and not pre.statistics:
            console.print("preprocessing: identical steps and fitted statistics")
        for line in pre.structure:
            console.print(_text(f"preprocessing: {line}", style="yellow"))
        if pre.statistics:
            table = Table(title="preprocessing statistics that moved", title_justify="left")
            for heading in ("input", "step", "what moved", "max abs", "max rel"):
                table.add_column(heading)
            for s in pre.statistics:
                table.add_row(
                    _text(s.input),
                    f"{s.step} {s.kind}",
                    _text(s.summary),
                    number_text(s.max_abs_change),
                    number_text(s.max_rel_change),
                )
            console.print(table)
    graphs = Table(title="graphs", title_justify="left")
    for column in (
        "stage",
        "A: nodes / parameters / opset / bytes",
        "B: nodes / parameters / opset / bytes",
        "operator counts that changed (A -> B)",
    ):
        graphs.add_column(column)
    for g in report.graphs:

        def summary(s) -> str:
            return "-" if s is None else f"{s.nodes} / {s.parameters:,} / {s.opset} / {s.bytes:,}"

        changes = ", ".join(f"{op} {n[0]}->{n[1]}" for op, n in g.operator_changes.items()) or "none"
        graphs.add_row(g.stage, summary(g.a), summary(g.b), _text(changes))
    console.print(graphs)
    console.print(
        _field_table("tolerance policy changes", report.tolerance)
        if report.tolerance
        else "tolerance policy: identical"
    )
    if report.environment:
        table = Table(title="environment lock differences (A -> B)", title_justify="left")
        for heading in ("severity", "what", "A", "B", "why it matters"):
            table.add_column(heading)
        for item in report.environment:
            table.add_row(
                _text(item.severity, style=_SEVERITY_STYLE[item.severity]),
                _text(item.what),
                _text(item.locked or "-"),
                _text(item.running or "-"),
                _text(item.reason),
            )
        console.print(table)
    else:
        console.print("environment locks: identical")
    if report.provenance:
        console.print(_field_table("provenance", report.provenance))
    if report.strength:
        console.print(_field_table("how strong each verdict is", report.strength))
    if report.behaviour:
        table = Table(title="behaviour, judged by A's tolerance", title_justify="left")
        for heading in ("run", "samples", "output", "max abs", "violations", "of tol", "argmax flips", "verdict"):
            table.add_column(heading)
        for run in report.behaviour:
            if run.problem:
                table.add_row(
                    _text(run.description),
                    str(run.samples),
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    _text(f"FAIL: {run.problem}", style="bold red"),
                )
            for c in run.outputs:
                s, d = c.stats, c.decision
                flips = (
                    "-"
                    if d is None
                    else f"{d.samples - d.agreeing}"
                    + (
                        f" (samples {', '.join(map(str, d.disagreeing_samples[:8]))}{', ...' if len(d.disagreeing_samples) > 8 else ''})"
                        if d.disagreeing_samples
                        else ""
                    )
                )
                table.add_row(
                    _text(run.description),
                    str(run.samples),
                    c.name,
                    number_text(s.max_abs if s else None),
                    f"{s.violations}/{s.elements}" if s else "-",
                    "-" if s is None else _share(s.max_tolerance_ratio),
                    _text(flips),
                    _text("PASS", style="bold green") if c.passed else _text("FAIL", style="bold red"),
                )
        console.print(table)
    style = "bold green" if report.passed else "bold red"
    console.print(_text(("OK: " if report.passed else "DIFFERS: ") + report.verdict, style=style))
