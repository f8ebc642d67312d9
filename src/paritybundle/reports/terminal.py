"""Terminal renderings (rich) of check and drift results, a lock and a manifest (a diff: :mod:`.diff_terminal`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..bundle.manifest import Manifest
from ..bundle.strict import printable
from ..check.results import CheckReport
from ..parity.explain import explain_failure
from ..parity.localise import StageResult
from ..parity.results import OutputComparison
from ..runtime.drift import DriftReport
from ..runtime.lock import EnvironmentLock
from .strength import budget_lines, coverage_lines, power_sentence, tolerance_lines


class SafeConsole(Console):
    """A rich Console that prints every string as data: control characters escaped (an escape
    sequence in a manifest must not drive the terminal; rich strips BEL but keeps ESC). Every str
    renderable, table cells and titles included, passes through ``render_str``; rich's own styling
    codes are added after it, so they are untouched."""

    def render_str(self, text: str, **options: Any) -> Text:
        return super().render_str(printable(text), **options)


def _text(value: object, style: str | None = None) -> Text:
    """A ``Text`` of anything from a bundle or report: control characters escaped (Text bypasses ``render_str``)."""
    return Text(printable(value), style=style or "")


def number_text(value: float | None) -> str:
    """A statistic for a table: three significant digits, "-" when there is none."""
    return "-" if value is None else f"{value:.3g}"


def _share(ratio: float) -> str:
    return f"{ratio:.0%}" if ratio < 10 else f"{ratio:,.0f}x"  # of its tolerance: 3% passing, 140x far out


def _decision(comparison: OutputComparison) -> str:
    d = comparison.decision
    if d is None:
        return "-"
    text = f"{d.agreement:.2%}{' of positions' if d.per_position else ''} (min {d.min_agreement:.0%})"
    return text + (f", {d.ties} ties" if d.ties else "")


def _worst_sample(c: OutputComparison) -> str:
    """The worst element's sample; in a reference set of groups, ``group G sample S``."""
    s = c.stats
    if s is None or s.worst_sample is None:
        return "-"
    if c.worst_group is not None:
        return f"group {c.worst_group} sample {c.worst_group_sample}"
    return str(s.worst_sample)


def check_table(report: CheckReport) -> Table:
    table = Table(
        title=f"parity: {report.bundle.name} v{report.bundle.version} "
        f"({report.settings.samples} {'captured' if report.settings.source in ('capture', 'replay') else 'reference'} samples)",
        title_justify="left",
    )
    for column in (
        "output",
        "max abs",
        "mean abs",
        "p99 abs",
        "max rel",
        "p99 rel",
        "violations",
        "worst sample",
        "of tol",
        "argmax agree",
        "atol / rtol",
        "verdict",
    ):
        table.add_column(column, justify="left" if column in ("output", "verdict") else "right")
    for c in report.outputs:
        s = c.stats
        verdict = _text("PASS", style="bold green") if c.passed else _text("FAIL", style="bold red")
        table.add_row(
            c.name,
            number_text(s.max_abs if s else None),
            number_text(s.mean_abs if s else None),
            number_text(s.p99_abs if s else None),
            number_text(s.max_rel if s else None),
            number_text(s.p99_rel if s else None),
            f"{s.violations}/{s.elements}" if s else "-",
            _worst_sample(c),
            "-" if s is None else _share(s.max_tolerance_ratio),
            _decision(c),
            (
                f"budget, max {c.tolerance.atol:g}"
                if c.budget is not None
                else f"{c.tolerance.atol:g} / {c.tolerance.rtol:g}"
            )
            + (" *" if c.name in report.tolerance_overrides else ""),
            verdict,
        )
    return table


_SEVERITY_STYLE = {"critical": "bold red", "notable": "yellow", "info": "dim"}


def drift_table(drift: DriftReport) -> Table:
    title = (
        f"environment vs lock (policy {drift.policy}): {drift.count('critical')} critical, "
        f"{drift.count('notable')} notable, {drift.count('info')} info"
    )
    table = Table(title=title, title_justify="left")
    for heading in ("severity", "what", "locked", "here", "why it matters"):
        table.add_column(heading)
    for item in drift.items:
        table.add_row(
            _text(item.severity, style=_SEVERITY_STYLE[item.severity]),
            _text(item.what),
            _text(item.locked or "-"),
            _text(item.running or "-"),
            _text(item.reason),
        )
    return table


def render_drift(drift: DriftReport, console: Console) -> None:
    if drift.items:
        console.print(drift_table(drift))
    else:
        console.print(f"environment vs lock (policy {drift.policy}): no drift")


def render_lock(lock: EnvironmentLock, console: Console) -> None:
    """`bundle env`: the lock, readably."""
    console.print(
        f"python {lock.python.version} ({lock.python.implementation}) on {lock.platform.system} "
        f"{lock.platform.machine}, {lock.platform.libc or 'libc unknown'}, kernel {lock.platform.release}"
    )
    console.print(f"cpu: {lock.cpu.model or 'unknown'}; numeric features: {' '.join(lock.cpu.numeric_flags) or '-'}")
    console.print(f"onnxruntime {lock.onnxruntime.version} (providers: {', '.join(lock.onnxruntime.providers)})")
    if lock.torch:
        console.print(
            f"torch {lock.torch.version}, CUDA {lock.torch.cuda or '-'}, cuDNN {lock.torch.cudnn or '-'}, "
            f"device {lock.torch.device_name or 'cpu'}"
        )
    console.print(
        f"threads: {' '.join(f'{k}={v}' for k, v in lock.threads.items()) or '(defaults)'}; "
        f"paritybundle {lock.paritybundle}"
    )
    table = Table(title=f"distributions ({len(lock.distributions)}; serving pins marked *)", title_justify="left")
    table.add_column("name")
    table.add_column("version")
    for name, version in lock.distributions.items():
        table.add_row(_text(name + (" *" if name in lock.serving else "")), _text(version))
    console.print(table)


def stage_table(report: CheckReport, stages: list[StageResult] | None = None) -> Table:
    """Each stage on its own, and the preprocessing per raw input (column)."""
    table = Table(
        title="stages: preprocessing per raw input vs the reference features; model on the reference "
        "features; merged pipeline; merge = pipeline vs the two stages run in sequence",
        title_justify="left",
    )
    for heading in ("stage", "file", "compared", "max abs", "violations", "worst sample", "of tol", "verdict"):
        table.add_column(heading, justify="left" if heading in ("stage", "file", "compared", "verdict") else "right")

    def row(stage: str, file: str, what: str, c: OutputComparison) -> None:
        s = c.stats
        table.add_row(
            stage,
            file,
            _text(what),
            number_text(s.max_abs if s else None),
            f"{s.violations}/{s.elements}" if s else "-",
            _worst_sample(c),
            "-" if s is None else _share(s.max_tolerance_ratio),
            _text("PASS", style="bold green") if c.passed else _text("FAIL", style="bold red"),
        )

    for stage in report.stages if stages is None else stages:
        if stage.stage == "preprocess" and stage.columns:
            for column in stage.columns:
                where = f"[{column.features[0]}:{column.features[1]}]" if column.features else ""
                row(stage.stage, stage.file, f"column {column.input} -> {column.feature}{where}", column.comparison)
        else:
            for c in stage.outputs:
                what = f"output {c.name}" + (" vs preprocess -> model" if stage.stage == "merge" else "")
                row(stage.stage, stage.file, what, c)
    return table


def render_check(report: CheckReport, console: Console) -> None:
    console.print(check_table(report))
    for line in budget_lines(report.outputs):
        console.print(_text(line))
    # The single-row pass gets the table only when it failed; otherwise one line says it ran.
    alone = [s for s in report.stages if s.stage == "rows alone" and s.passed]
    shown = [s for s in report.stages if s not in alone]
    if shown:
        console.print(stage_table(report, shown))
    for stage in alone:
        console.print(_text(f"rows alone: {stage.file}: every output reproduces research"))
    if report.environment is not None:
        render_drift(report.environment, console)
    for line in [explain_failure(c) for c in report.outputs if not c.passed]:
        console.print(_text(line, style="red"))
    if report.diagnosis:
        console.print(_text(f"where: {report.diagnosis}", style="bold red"))
    for name, requests in report.failing_requests.items():
        console.print(_text(f"output {name!r} failed on requests: {', '.join(requests)}", style="red"))
    for line in report.notices:
        console.print(_text(f"notice: {line}", style="yellow"))
    if report.power is not None:
        console.print(power_sentence(report.power))
    settings = report.settings
    if settings.source in ("capture", "replay"):
        what = "this runtime" if settings.source == "capture" else "the research model, replayed,"
        console.print(
            f"{what} against what production served: {settings.samples} captured samples from "
            f"{settings.capture}; {report.bundle.files_verified} files verified; {report.duration_s:.2f} s"
        )
        for worker in settings.workers:  # a check sharded on a cluster: who judged what
            console.print(_text(f"judged on {settings.engine}: {worker}"))
    elif settings.source == "testdata":
        console.print(
            f"references from ONNX test data in {settings.testdata} ({settings.samples} samples); "
            f"onnxruntime {settings.onnxruntime_version}; {report.bundle.files_verified} files verified; "
            f"{report.duration_s:.2f} s"
        )
    elif settings.source == "url":
        console.print(
            f"answers from {settings.url} (model {settings.model}), {settings.batch_size} samples per request; "
            f"references made on {report.reference['device']} ({report.reference['precision']}); "
            f"{report.bundle.files_verified} files verified; {report.duration_s:.2f} s"
        )
    else:
        console.print(
            f"onnxruntime {settings.onnxruntime_version}, {', '.join(settings.providers)}, "
            f"optimization {settings.graph_optimization_level}, threads {settings.intra_op_num_threads or 'auto'}, "
            f"batch {settings.batch_size or 'all'}; references made on {report.reference['device']} "
            f"({report.reference['precision']}); {report.bundle.files_verified} files verified; {report.duration_s:.2f} s"
        )
    failed = report.failed_outputs + [
        f"stage {s.stage}" for s in report.stages if not s.passed and s.stage != "pipeline"
    ]
    verdict = (
        _text("PARITY HOLDS", style="bold green")
        if report.passed
        else _text(f"PARITY FAILS: {', '.join(failed)}", style="bold red")
    )
    console.print(verdict)


def _spec_table(title: str, specs) -> Table:
    table = Table(title=title, title_justify="left")
    for heading in ("name", "dtype", "shape", "kind"):
        table.add_column(heading)
    for s in specs:
        # Text, so rich does not read "[batch, 64]" as markup.
        # research in another dtype is stored and compared in the graph's (training/research_dtypes.py)
        dtype = s.dtype if s.research_dtype is None else f"{s.dtype} (research {s.research_dtype})"
        limits = getattr(s, "max_dims", None) or {}
        shape = ", ".join(f"{d} <= {limits[d]}" if d in limits else str(d) for d in s.shape)
        table.add_row(s.name, dtype, _text(f"[{shape}]"), s.kind)
    return table


def _summary(values: object) -> str:
    """Fitted statistics, short: a number, a list (first values and its range), a vocabulary."""
    if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
        if len(values) <= 4:
            return ", ".join(f"{v:.4g}" for v in values)
        shown = ", ".join(f"{v:.4g}" for v in values[:4])
        return f"[{shown}{', ...' if len(values) > 4 else ''}] ({len(values)} values, {min(values):.4g}..{max(values):.4g})"
    if isinstance(values, list):
        shown = ", ".join(map(str, values[:5]))
        return f"[{shown}{', ...' if len(values) > 5 else ''}] ({len(values)})"
    return str(values)


def preprocessing_table(manifest: Manifest) -> Table:
    """`bundle inspect`: each raw input's steps with their fitted statistics."""
    pre = manifest.preprocessing
    assert pre is not None
    features = ", ".join(f"{f.name} {f.dtype}[{', '.join(map(str, f.shape))}]" for f in pre.features)
    table = Table(title=f"preprocessing ({pre.source}) -> {features}", title_justify="left")
    for heading in ("input", "features", "step", "NaN", "fitted state"):
        table.add_column(heading)
    for column in pre.columns:
        where = f"{column.features[0]}..{column.features[1] - 1}" if column.features else "all"
        if not column.steps:
            table.add_row(column.input, where, "(passthrough)", "propagates", "-")
        for position, step in enumerate(column.steps):
            params = step.params
            if "vocabulary" in params:
                state = (
                    f"vocabulary {len(params['vocabulary'])} + OOV bucket at index {params.get('oov_index')}: "
                    f"{_summary(params['vocabulary'])}"
                )
            else:
                state = (
                    "; ".join(
                        f"{key} {_summary(value)}"
                        for key, value in params.items()
                        if key not in ("counts", "missing_share_in_training")
                    )
                    or "-"
                )
            table.add_row(
                column.input if position == 0 else "", where if position == 0 else "", step.kind, step.nan, _text(state)
            )
    return table


def render_manifest(manifest: Manifest, console: Console) -> None:
    """`bundle inspect`: specs, stages, tolerance, provenance, sizes."""
    m = manifest
    console.print(
        _text(f"{m.name} v{m.version}", style="bold"),
        f"created {m.created_at.isoformat()} by paritybundle {m.producer.version}",
    )
    console.print("libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(m.producer.libraries.items())))
    console.print(_spec_table("inputs", m.inputs))
    console.print(_spec_table("outputs", m.outputs))
    console.print(
        f"stages: pipeline {m.stages.pipeline}, model {m.stages.model}, preprocess "
        f"{m.stages.preprocess or '(none)'}; opset {m.stages.opset}; exporter {m.stages.exporter}"
    )
    if m.preprocessing is not None:
        console.print(preprocessing_table(m))
    tol = m.tolerance
    lines = [
        f"tolerance: preset atol {tol.default.atol:g}, rtol {tol.default.rtol:g}, equal_nan {tol.default.equal_nan} "
        f"(references made on {tol.reference_device}, {tol.reference_precision}); "
        f"argmax agreement >= {tol.min_decision_agreement:.0%}{' (research graph)' if tol.approximation else ''}, near ties on at most {tol.max_tie_share:.0%} of "
        f"samples; notice above {tol.baseline_factor:g}x export error"
    ]
    lines += [f"  {line}" for line in tolerance_lines(tol)]
    console.print("\n".join(lines))
    console.print(
        f"runtime validated with: onnxruntime {m.runtime.onnxruntime_version}, "
        f"{', '.join(m.runtime.providers)}, optimization {m.runtime.graph_optimization_level}"
    )
    errors = Table(title=f"export-time error, {m.export_error_label()}", title_justify="left")
    for heading in ("output", "max abs", "mean abs", "max rel"):
        errors.add_column(heading)
    for name, e in m.export_errors.items():
        errors.add_row(name, number_text(e.max_abs), number_text(e.mean_abs), number_text(e.max_rel))
    console.print(errors)
    p = m.provenance
    git = f"{p.git.commit[:12]}{' (dirty)' if p.git.dirty else ''}" if p.git else "(not in a git checkout)"
    console.print(
        f"provenance: git {git}; params {p.params or '{}'}; metrics {p.metrics or '{}'}; data {p.data_hashes or '{}'}"
    )
    console.print(
        f"reference set: {m.reference.samples} samples"
        + (f" in {len(m.reference.groups)} groups of shapes" if m.reference.groups else "")
    )
    for index, group in enumerate(m.reference.groups):
        shapes = ", ".join(f"{name} {shape}" for name, shape in group.shapes.items())
        console.print(_text(f"  group {index}: {group.samples} samples; per sample {shapes}"))
    console.print("\n".join([power_sentence(m.power), *coverage_lines(m.coverage)]))
    files = Table(title="files", title_justify="left")
    files.add_column("path")
    files.add_column("bytes", justify="right")
    files.add_column("sha256")
    for path, digest in sorted(m.files.items()):
        files.add_row(path, f"{digest.bytes:,}", digest.sha256[:16] + "...")
    console.print(Group(files))


def render_input_drift(report, console: Console) -> None:
    """``bundle drift``: one row per column, then the findings and the closing sentence."""
    table = Table(
        title=f"input drift: {report.bundle} v{report.version} ({report.samples} captured samples, "
        f"{report.reference_samples} reference samples)",
        title_justify="left",
    )
    for column in ("column", "kind", "NaN", "PSI", "outside reference", "outside fitted", "unseen", "verdict"):
        table.add_column(column, justify="left" if column in ("column", "kind") else "right")

    def pct(value):
        return "-" if value is None else f"{value:.1%}"

    for c in report.columns:
        table.add_row(
            _text(c.column),
            c.kind,
            pct(c.nan_share),
            "-" if c.psi is None else f"{c.psi:.3f}",
            pct(c.outside_reference_range),
            pct(c.outside_fitted_range),
            pct(c.unseen_share),
            Text("DRIFT", style="red") if c.findings else Text("ok", style="green"),
        )
    console.print(table)
    for output in report.outputs:
        console.print(
            _text(
                f"predicted classes of {output.output}: total variation {output.shift:.2f} from research's"
                + (" (DRIFT)" if output.findings else "")
            )
        )
    console.print(_text(report.summary, style="bold green" if report.passed else "bold red"))
