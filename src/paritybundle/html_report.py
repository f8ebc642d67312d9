"""Self-contained HTML pages (no scripts, no external assets) for reports people read in a browser
or attach to a CI run. Every value is escaped: bundle contents are data, never markup."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1f23;max-width:1200px}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.note{color:#9a6700}.verdict{font-size:1.1rem;padding:.6rem;border-radius:6px}
.verdict.pass{background:#dafbe1}.verdict.fail{background:#ffebe9}code{font-size:.85rem}
"""


def cell(value: object, css: str | None = None) -> str:
    text = "-" if value is None else str(value)
    return f'<td class="{css}">{escape(text)}</td>' if css else f"<td>{escape(text)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """``rows`` hold ready ``<td>`` strings (from :func:`cell`)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def verdict_cell(passed: bool) -> str:
    return cell("PASS", "pass") if passed else cell("FAIL", "fail")


def paragraph(text: str, css: str | None = None) -> str:
    return f'<p class="{css}">{escape(text)}</p>' if css else f"<p>{escape(text)}</p>"


def page(title: str, sections: Iterable[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>" + "".join(sections) + "</body></html>\n")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def diff_page(report) -> str:
    """`bundle diff --html`: the same sections as the terminal rendering."""
    a, b = report.a, report.b
    sections = [f'<p class="verdict {"pass" if report.passed else "fail"}">{escape(report.verdict)}</p>',
                paragraph(f"A: {a.name} v{a.version} ({a.path}), created {a.created_at.isoformat()}"),
                paragraph(f"B: {b.name} v{b.version} ({b.path}), created {b.created_at.isoformat()}")]
    compat = report.compatibility
    sections.append("<h2>Compatibility</h2>")
    sections.append(paragraph("B can replace A behind the same endpoint." if compat.compatible
                              else "B cannot replace A behind the same endpoint.", "pass" if compat.compatible else "fail"))
    sections += [paragraph(p, "fail") for p in compat.problems] + [paragraph(n, "note") for n in compat.notes]
    sections.append("<h2>Input and output specs</h2>")

    def spec(s) -> str:
        return "-" if s is None else f"{s.dtype}[{', '.join(map(str, s.shape))}]"
    sections.append(table(["kind", "name", "A", "B", "breaks A's clients", "detail"],
                          [[cell(d.kind), cell(d.name), cell(spec(d.a)), cell(spec(d.b)),
                            cell("yes", "fail") if d.breaking else cell("no"), cell(d.detail)] for d in report.specs])
                    if report.specs else paragraph("identical"))
    sections.append("<h2>Preprocessing</h2>")
    pre = report.preprocessing
    if pre is None:
        sections.append(paragraph("neither bundle has preprocessing"))
    else:
        sections += [paragraph(line, "note") for line in pre.structure]
        sections.append(table(["input", "step", "what moved", "max abs change", "max rel change"],
                              [[cell(s.input), cell(f"{s.step} {s.kind}"), cell(s.summary), cell(_num(s.max_abs_change)),
                                cell(_num(s.max_rel_change))] for s in pre.statistics])
                        if pre.statistics else paragraph("fitted statistics identical"))
    sections.append("<h2>Graphs</h2>")

    def summary(s) -> str:
        return "-" if s is None else f"{s.nodes} nodes, {s.parameters:,} parameters, opset {s.opset}, {s.bytes:,} bytes"
    sections.append(table(["stage", "A", "B", "operator counts that changed (A -> B)"],
                          [[cell(g.stage), cell(summary(g.a)), cell(summary(g.b)),
                            cell(", ".join(f"{op} {n[0]}->{n[1]}" for op, n in g.operator_changes.items()) or "none")]
                           for g in report.graphs]))
    for title, changes in (("Tolerance policy", report.tolerance), ("Provenance", report.provenance)):
        sections.append(f"<h2>{escape(title)}</h2>")
        sections.append(table(["what", "A", "B"], [[cell(c.what), cell(c.a), cell(c.b)] for c in changes])
                        if changes else paragraph("identical"))
    sections.append("<h2>Environment locks</h2>")
    sections.append(table(["severity", "what", "A", "B", "why it matters"],
                          [[cell(i.severity, "fail" if i.severity == "critical" else None), cell(i.what), cell(i.locked),
                            cell(i.running), cell(i.reason)] for i in report.environment])
                    if report.environment else paragraph("identical"))
    sections.append("<h2>Behaviour (judged by A's tolerance)</h2>")
    rows = []
    for run in report.behaviour:
        if run.problem:
            rows.append([cell(run.description), cell(run.samples), cell("-"), cell("-"), cell("-"), cell("-"),
                         cell(f"FAIL: {run.problem}", "fail")])
        for c in run.outputs:
            s, d = c.stats, c.decision
            flips = "-" if d is None else f"{d.samples - d.agreeing} (samples {d.disagreeing_samples[:20]})"
            rows.append([cell(run.description), cell(run.samples), cell(c.name), cell(_num(s and s.max_abs)),
                         cell(f"{s.violations}/{s.elements}" if s else "-"), cell(flips), verdict_cell(c.passed)])
    sections.append(table(["run", "samples", "output", "max abs", "violations", "argmax flips", "verdict"], rows)
                    if rows else paragraph("not run: the specs are incompatible"))
    return page(f"bundle diff: {a.name} v{a.version} -> {b.name} v{b.version}", sections)
