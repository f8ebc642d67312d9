"""``bundle drift --html``: per column, reference against production, as a self-contained page.

Every value is escaped: captured traffic and bundle contents are data, never markup.
"""

from __future__ import annotations

from html import escape

from ..check.input_drift import ColumnDrift, Histogram, InputDriftReport
from .html_page import page, paragraph, table


def drift_page(report: InputDriftReport) -> str:
    verdict = "INPUTS STAY INSIDE THE REFERENCE SET" if report.passed else "INPUTS HAVE DRIFTED"
    sections = [
        f'<p class="verdict {"pass" if report.passed else "fail"}">{escape(verdict)}</p>',
        paragraph(report.summary),
        paragraph(
            f"{report.samples} captured samples ({report.requests} requests) from {report.capture}, "
            f"against {report.reference_samples} reference samples of {report.bundle} v{report.version}."
        ),
    ]
    rows = [
        [
            c.column,
            c.kind,
            _pct(c.nan_share),
            _pct(c.reference_nan_share),
            _num(c.psi),
            _pct(c.outside_reference_range),
            _pct(c.outside_fitted_range),
            _pct(c.unseen_share),
            "; ".join(c.findings) or "-",
        ]
        for c in report.columns
    ]
    sections.append(
        table(
            [
                "column",
                "kind",
                "NaN",
                "NaN (reference)",
                "PSI",
                "outside reference range",
                "outside fitted range",
                "unseen categories",
                "finding",
            ],
            rows,
        )
    )
    for output in report.outputs:
        labels = sorted(set(output.research) | set(output.production), key=lambda v: int(v) if v.isdigit() else v)
        sections.append(f"<h2>predicted classes: {escape(output.output)}</h2>")
        sections.append(
            _bars(
                Histogram(
                    labels=labels,
                    reference=[output.research.get(k, 0.0) for k in labels],
                    production=[output.production.get(k, 0.0) for k in labels],
                ),
                f"{output.output}: class shares (total variation {output.shift:.2f})",
            )
        )
    for column in report.columns:
        if column.histogram is not None:
            sections.append(f"<h2>{escape(column.column)}</h2>")
            sections.append(_bars(column.histogram, _title(column)))
    return page(f"drift: {report.bundle} v{report.version}", sections)


def _title(column: ColumnDrift) -> str:
    return f"{column.column}: share per bin, reference (grey) and production (blue)" + (
        f", PSI {column.psi:.2f}" if column.psi is not None else ""
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _bars(histogram: Histogram, title: str) -> str:
    """Paired bars per bin: reference and production shares."""
    bins = len(histogram.labels)
    width, height, left, top, bottom = max(360, 46 * bins + 60), 220, 40, 24, 70
    plot = height - top - bottom
    peak = max(histogram.reference + histogram.production + [1e-9])
    step = (width - left - 10) / max(bins, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<text x="{left}" y="14" font-size="12" font-weight="600">{escape(title)}</text>',
    ]
    for k, (label, ref, prod) in enumerate(
        zip(histogram.labels, histogram.reference, histogram.production, strict=True)
    ):
        x = left + k * step
        for offset, value, colour in ((0.1, ref, "#8c959f"), (0.5, prod, "#0969da")):
            bar = plot * value / peak
            parts.append(
                f'<rect x="{x + offset * step:.1f}" y="{top + plot - bar:.1f}" width="{0.38 * step:.1f}" '
                f'height="{bar:.1f}" fill="{colour}"><title>{escape(label)}: {value:.1%}</title></rect>'
            )
        parts.append(
            f'<text x="{x + step / 2:.1f}" y="{top + plot + 12}" font-size="9" text-anchor="end" '
            f'transform="rotate(-40 {x + step / 2:.1f} {top + plot + 12})">{escape(label[:24])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
