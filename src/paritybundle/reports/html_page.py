"""Self-contained HTML pages (no scripts, no external assets) for reports people read in a browser
or attach to a CI run. Every value is escaped: bundle contents are data, never markup."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from .strength import coverage_lines, power_sentence
from .terminal import number_text

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1f23;max-width:1200px}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.note{color:#9a6700}.verdict{font-size:1.1rem;padding:.6rem;border-radius:6px}
.verdict.pass{background:#dafbe1}.verdict.fail{background:#ffebe9}code{font-size:.85rem}
.plots{display:flex;flex-wrap:wrap;gap:1rem}svg{background:#fff;border:1px solid #d0d7de}
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
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>" + "".join(sections) + "</body></html>\n"
    )


def diff_page(report) -> str:
    """`bundle diff --html`: the same sections as the terminal rendering."""
    a, b = report.a, report.b
    sections = [
        f'<p class="verdict {"pass" if report.passed else "fail"}">{escape(report.verdict)}</p>',
        paragraph(f"A: {a.name} v{a.version} ({a.path}), created {a.created_at.isoformat()}"),
        paragraph(f"B: {b.name} v{b.version} ({b.path}), created {b.created_at.isoformat()}"),
    ]
    compat = report.compatibility
    sections.append("<h2>Compatibility</h2>")
    sections.append(
        paragraph(
            "B can replace A behind the same endpoint."
            if compat.compatible
            else "B cannot replace A behind the same endpoint.",
            "pass" if compat.compatible else "fail",
        )
    )
    sections += [paragraph(p, "fail") for p in compat.problems] + [paragraph(n, "note") for n in compat.notes]
    sections.append("<h2>Input and output specs</h2>")

    def spec(s) -> str:
        return "-" if s is None else f"{s.dtype}[{', '.join(map(str, s.shape))}]"

    sections.append(
        table(
            ["kind", "name", "A", "B", "breaks A's clients", "detail"],
            [
                [
                    cell(d.kind),
                    cell(d.name),
                    cell(spec(d.a)),
                    cell(spec(d.b)),
                    cell("yes", "fail") if d.breaking else cell("no"),
                    cell(d.detail),
                ]
                for d in report.specs
            ],
        )
        if report.specs
        else paragraph("identical")
    )
    sections.append("<h2>Preprocessing</h2>")
    pre = report.preprocessing
    if pre is None:
        sections.append(paragraph("neither bundle has preprocessing"))
    else:
        sections += [paragraph(line, "note") for line in pre.structure]
        sections.append(
            table(
                ["input", "step", "what moved", "max abs change", "max rel change"],
                [
                    [
                        cell(s.input),
                        cell(f"{s.step} {s.kind}"),
                        cell(s.summary),
                        cell(number_text(s.max_abs_change)),
                        cell(number_text(s.max_rel_change)),
                    ]
                    for s in pre.statistics
                ],
            )
            if pre.statistics
            else paragraph("fitted statistics identical")
        )
    sections.append("<h2>Graphs</h2>")

    def summary(s) -> str:
        return "-" if s is None else f"{s.nodes} nodes, {s.parameters:,} parameters, opset {s.opset}, {s.bytes:,} bytes"

    sections.append(
        table(
            ["stage", "A", "B", "operator counts that changed (A -> B)"],
            [
                [
                    cell(g.stage),
                    cell(summary(g.a)),
                    cell(summary(g.b)),
                    cell(", ".join(f"{op} {n[0]}->{n[1]}" for op, n in g.operator_changes.items()) or "none"),
                ]
                for g in report.graphs
            ],
        )
    )
    for title, changes in (
        ("Tolerance policy", report.tolerance),
        ("Provenance", report.provenance),
        ("How strong each verdict is", report.strength),
    ):
        sections.append(f"<h2>{escape(title)}</h2>")
        sections.append(
            table(["what", "A", "B"], [[cell(c.what), cell(c.a), cell(c.b)] for c in changes])
            if changes
            else paragraph("identical")
        )
    sections.append("<h2>Environment locks</h2>")
    sections.append(
        table(
            ["severity", "what", "A", "B", "why it matters"],
            [
                [
                    cell(i.severity, "fail" if i.severity == "critical" else None),
                    cell(i.what),
                    cell(i.locked),
                    cell(i.running),
                    cell(i.reason),
                ]
                for i in report.environment
            ],
        )
        if report.environment
        else paragraph("identical")
    )
    sections.append("<h2>Behaviour (judged by A's tolerance)</h2>")
    rows = []
    for run in report.behaviour:
        if run.problem:
            rows.append(
                [
                    cell(run.description),
                    cell(run.samples),
                    cell("-"),
                    cell("-"),
                    cell("-"),
                    cell("-"),
                    cell(f"FAIL: {run.problem}", "fail"),
                ]
            )
        for c in run.outputs:
            s, d = c.stats, c.decision
            flips = (
                "-"
                if d is None
                else str(d.samples - d.agreeing)
                + (f" (samples {d.disagreeing_samples[:20]})" if d.disagreeing_samples else "")
            )
            rows.append(
                [
                    cell(run.description),
                    cell(run.samples),
                    cell(c.name),
                    cell(number_text(s and s.max_abs)),
                    cell(f"{s.violations}/{s.elements}" if s else "-"),
                    cell(flips),
                    verdict_cell(c.passed),
                ]
            )
    sections.append(
        table(["run", "samples", "output", "max abs", "violations", "argmax flips", "verdict"], rows)
        if rows
        else paragraph("not run: the specs are incompatible")
    )
    return page(f"bundle diff: {a.name} v{a.version} -> {b.name} v{b.version}", sections)


# --- bundle check --html ------------------------------------------------------------------------


def _bars(edges: list[float], counts: list[int], zero: int, line_at: float | None, line_label: str, title: str) -> str:
    """An inline SVG histogram over log10 bins, with the tolerance as a vertical red line."""
    width, height, left, bottom, top = 560, 190, 48, 36, 22
    plot_w, plot_h = width - left - 12, height - bottom - top
    bins = len(counts)
    total = max(max(counts + [zero]), 1)
    slot = plot_w / (bins + 2)  # one slot for "0" (exact matches) and a gap
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<text x="{left}" y="14" font-size="12" font-weight="600">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#57606a"/>',
    ]

    def bar(x: float, count: int, colour: str) -> None:
        h = plot_h * count / total
        if count:
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{max(slot - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{count}</title></rect>'
            )

    bar(left, zero, "#8c959f")
    parts.append(
        f'<text x="{left + slot / 2:.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">0</text>'
    )
    origin = left + 2 * slot
    for k, count in enumerate(counts):
        bar(origin + k * slot, count, "#0969da")
    step = edges[1] - edges[0]
    for k, edge in enumerate(edges):
        if edge == int(edge) and int(edge) % 2 == 0 and k > 1:  # keep clear of the "0" label
            x = origin + k * slot
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">1e{int(edge)}</text>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" font-size="10" text-anchor="middle">'
        f"error (log scale); bar height: elements; grey: exact matches</text>"
    )
    parts.append(f'<text x="8" y="{top + 10}" font-size="10">{total:,}</text>')
    if line_at is not None and line_at > 0:
        import math

        position = (math.log10(line_at) - edges[0]) / step
        x = origin + min(max(position, 0), bins) * slot
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#cf222e" '
            f'stroke-width="2" stroke-dasharray="4 2"/>'
        )
        parts.append(f'<text x="{x + 4:.1f}" y="{top + 8}" font-size="10" fill="#cf222e">{escape(line_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _output_section(c, overridden: bool) -> str:
    s = c.stats
    head = f'<h2>output {escape(c.name)}: <span class="{"pass" if c.passed else "fail"}">{"PASS" if c.passed else "FAIL"}</span></h2>'
    if s is None:
        return head + paragraph(c.problem or "no statistics", "fail")
    rows = [
        [
            cell("max / mean / p99 absolute error"),
            cell(f"{number_text(s.max_abs)} / {number_text(s.mean_abs)} / {number_text(s.p99_abs)}"),
        ],
        [
            cell("max / mean / p99 relative error"),
            cell(f"{number_text(s.max_rel)} / {number_text(s.mean_rel)} / {number_text(s.p99_rel)}"),
        ],
        [cell("elements outside tolerance"), cell(f"{s.violations} of {s.elements}")],
        [
            cell("tolerance"),
            cell(
                f"atol {c.tolerance.atol:g} + rtol {c.tolerance.rtol:g} * |research|"
                + (" (overridden at check time)" if overridden else "")
            ),
        ],
        [
            cell("share of tolerance used by the worst element"),
            cell(f"{s.max_tolerance_ratio:.1%}" if s.max_tolerance_ratio < 10 else f"{s.max_tolerance_ratio:,.0f}x"),
        ],
        [
            cell("worst element"),
            cell(
                f"sample {s.worst_sample}, index {s.worst_index}: serving {s.worst_serve}, research {s.worst_research}"
            ),
        ],
    ]
    if c.decision is not None:
        d = c.decision
        rows.append(
            [
                cell("argmax agreement"),
                cell(
                    f"{d.agreement:.2%} of {d.samples} {d.unit} (min {d.min_agreement:.0%}); "
                    f"disagreeing samples: {d.disagreeing_samples[:20] or 'none'}"
                ),
            ]
        )
    if c.failing_samples:
        rows.append(
            [cell("failing samples, worst first"), cell(f"{c.failing_samples} ({c.failing_sample_count} in all)")]
        )
    if c.baseline_max_abs is not None:
        rows.append([cell("export-time error (research vs ONNX Runtime)"), cell(number_text(c.baseline_max_abs))])
    body = head + table(["statistic", "value"], rows)
    if c.histogram is not None:
        h = c.histogram
        body += (
            '<div class="plots">'
            + _bars(
                h.log10_edges,
                h.abs_counts,
                h.abs_zero,
                c.tolerance.atol,
                f"atol {c.tolerance.atol:g}",
                f"{c.name}: absolute error |serving - research|",
            )
            + _bars(
                h.log10_edges,
                h.rel_counts,
                h.rel_zero,
                c.tolerance.rtol,
                f"rtol {c.tolerance.rtol:g}",
                f"{c.name}: relative error |serving - research| / |research|",
            )
            + "</div>"
        )
        body += paragraph(
            "An element fails when its absolute error exceeds atol + rtol * |research|: the dashed lines "
            "mark atol (for elements near zero) and rtol (for large ones).",
            "note",
        )
    return body


def check_page(report) -> str:
    """`bundle check --html`: verdict, a plot per output, the worst samples, stages, drift, settings."""
    from ..parity.explain import explain_failure

    verdict = (
        "PARITY HOLDS"
        if report.passed
        else "PARITY FAILS: "
        + " ".join(
            [explain_failure(c) for c in report.outputs if not c.passed]
            + ([f"Where: {report.diagnosis}"] if report.diagnosis else [])
        )
    )
    sections = [
        f'<p class="verdict {"pass" if report.passed else "fail"}">{escape(verdict)}</p>',
        paragraph(
            f"{report.bundle.name} v{report.bundle.version} ({report.bundle.path}), "
            f"{report.settings.samples} reference samples, {report.bundle.files_verified} files verified, "
            f"checked {report.checked_at.isoformat()} in {report.duration_s:.2f} s"
        ),
    ]
    sections += [_output_section(c, c.name in report.tolerance_overrides) for c in report.outputs]
    if report.stages:
        rows = []
        for stage in report.stages:
            for column in stage.columns:
                c = column.comparison
                rows.append(
                    [
                        cell(stage.stage),
                        cell(stage.file),
                        cell(f"column {column.input}"),
                        cell(number_text(c.stats and c.stats.max_abs)),
                        cell(c.stats and f"{c.stats.violations}/{c.stats.elements}"),
                        verdict_cell(c.passed),
                    ]
                )
            if stage.stage != "preprocess" or not stage.columns:
                for c in stage.outputs:
                    rows.append(
                        [
                            cell(stage.stage),
                            cell(stage.file),
                            cell(f"output {c.name}"),
                            cell(number_text(c.stats and c.stats.max_abs)),
                            cell(c.stats and f"{c.stats.violations}/{c.stats.elements}"),
                            verdict_cell(c.passed),
                        ]
                    )
        sections += ["<h2>Stages</h2>", table(["stage", "file", "compared", "max abs", "violations", "verdict"], rows)]
        if report.diagnosis:
            sections.append(paragraph(f"where: {report.diagnosis}", "fail"))
    sections.append("<h2>Environment drift</h2>")
    if report.environment is None:
        sections.append(paragraph("answers came from a live endpoint; its environment is not visible from here"))
    elif report.environment.items:
        sections.append(paragraph(f"policy {report.environment.policy}"))
        sections.append(
            table(
                ["severity", "what", "locked", "here", "why it matters"],
                [
                    [
                        cell(i.severity, "fail" if i.severity == "critical" else None),
                        cell(i.what),
                        cell(i.locked),
                        cell(i.running),
                        cell(i.reason),
                    ]
                    for i in report.environment.items
                ],
            )
        )
    else:
        sections.append(paragraph(f"no drift (policy {report.environment.policy})"))
    if report.notices:
        sections += ["<h2>Notices</h2>"] + [paragraph(n, "note") for n in report.notices]
    sections += ["<h2>How strong this verdict is</h2>", paragraph(power_sentence(report.power))]
    sections += [paragraph(line) for line in coverage_lines(report.coverage)]
    st = report.settings
    sections += [
        "<h2>Settings</h2>",
        table(
            ["setting", "value"],
            [
                [cell("source"), cell(st.url or st.testdata or "the bundle's reference set")],
                [cell("onnxruntime"), cell(st.onnxruntime_version)],
                [cell("providers"), cell(", ".join(st.providers) or "-")],
                [cell("graph optimization"), cell(st.graph_optimization_level)],
                [cell("intra-op threads"), cell(st.intra_op_num_threads)],
                [cell("batch size"), cell(st.batch_size)],
                [cell("references made on"), cell(f"{report.reference['device']} ({report.reference['precision']})")],
            ],
        ),
    ]
    return page(f"bundle check: {report.bundle.name} v{report.bundle.version}", sections)
