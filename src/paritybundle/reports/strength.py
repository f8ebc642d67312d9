"""How strong a verdict is, in words: each output's tolerance and the rule behind it, the reference
set's detection power and coverage (shared by the terminal, HTML and JUnit renderers)."""

from __future__ import annotations

from collections.abc import Sequence

from ..bundle.manifest import Coverage, Manifest, Power, TolerancePolicy
from ..parity.results import OutputComparison

_RULES = {
    "spread": "0.1% of the spread of its research values",
    "noise": "the noise measured at export (research vs ONNX Runtime), or float32 resolution at its magnitude",
    "preset": "the preset for references made on {device} ({precision})",
    "caller": "set by the export spec",
}


def bias_resolution(policy: TolerancePolicy, name: str) -> float | None:
    """The smallest relative bias of every value of output ``name`` the check detects: scaled by ``1 + k``,
    the largest-magnitude reference value moves by ``k * max_abs``, past ``atol + rtol * max_abs`` once
    ``k > rtol + atol / max_abs`` (no smaller value moves further past its own tolerance). None without
    the output's recorded scale, or when its values are all zero."""
    scale = policy.scales.get(name)
    if scale is None or not scale.max_abs:
        return None
    tolerance = policy.for_output(name)
    return tolerance.rtol + tolerance.atol / scale.max_abs


def approximation_lines(policy: TolerancePolicy) -> list[str]:
    """What a serving graph that approximates research by design is held to, and what export measured;
    empty for a bundle without one."""
    a = policy.approximation
    if a is None:
        return []
    lines = [
        f"approximation by design: the serving graph ({a.serving_graph}, {a.serving_precision}) is judged by "
        f"decisions (at least {a.min_decision_agreement:.2%} agree with research, labels equal) and a declared "
        "absolute-error budget, not the element-wise tolerance"
    ]
    for name in sorted(set(a.score_error) | set(a.measured)):
        budget, measured = a.score_error.get(name), a.measured.get(name)
        text = f"{name}: "
        if budget is not None:
            text += f"budget p50 {budget.p50:.3g}, p99 {budget.p99:.3g}, max {budget.max:.3g}"
        if measured is not None and measured.max is not None:
            text += (
                f"{'; ' if budget is not None else ''}measured at export p50 {measured.p50:.3g}, "
                f"p99 {measured.p99:.3g}, max {measured.max:.3g}"
            )
        if measured is not None and measured.agreement is not None:
            text += f"{'; ' if text != f'{name}: ' else ''}decisions agree {measured.agreement:.2%}"
        lines.append(text)
    return lines


def budget_lines(outputs: Sequence[OutputComparison]) -> list[str]:
    """A check's outputs judged by a declared error budget: each quantile beside its budget."""
    lines = []
    for c in outputs:
        if c.budget is not None and c.stats is not None:
            b = c.budget.budget
            lines.append(
                f"output {c.name!r}, approximation by design: error p50 "
                f"{'<= ' if c.budget.p50_is_bound else ''}{c.budget.p50_abs:.3g} (budget {b.p50:.3g}), "
                f"p99 {c.stats.p99_abs:.3g} ({b.p99:.3g}), max {c.stats.max_abs:.3g} ({b.max:.3g})"
            )
    return lines


def tolerance_lines(policy: TolerancePolicy) -> list[str]:
    """One line per output: its tolerance, and what set it (a budget, where one judges it)."""
    lines = approximation_lines(policy)
    for name, scale in policy.scales.items():
        if policy.budget_for(name) is not None:
            continue  # its budget line above says what judges it
        tolerance = policy.for_output(name)
        rule = _RULES[scale.rule].format(device=policy.reference_device, precision=policy.reference_precision)
        bias = bias_resolution(policy, name)
        lines.append(
            f"{name}: atol {tolerance.atol:.3g}, rtol {tolerance.rtol:g} (atol from {rule}; values spread "
            f"{scale.spread:.3g}, largest magnitude {scale.max_abs:.3g})"
            + (
                f"; detects its values all scaled by more than x{1 + bias:.6g} (a {bias:.3%} bias)"
                if bias is not None
                else ""
            )
        )
    for name, tolerance in policy.per_output.items():
        if name not in policy.scales:
            lines.append(f"{name}: atol {tolerance.atol:g}, rtol {tolerance.rtol:g}")
    return lines


def power_sentence(power: Power | None) -> str:
    if power is None:
        return "detection power: not measured (this bundle was exported before paritybundle measured it)"
    return power.sentence()


def coverage_lines(coverage: Coverage | None) -> list[str]:
    """What the reference set covers, a line per aspect."""
    if coverage is None:
        return ["coverage: not recorded (this bundle was exported before paritybundle recorded it)"]
    how = (
        "all the rows offered"
        if coverage.selection == "all"
        else f"{coverage.selected} covering rows of {coverage.candidates} offered"
    )
    lines = [f"reference rows: {how}" + (f", and {coverage.probes} probe rows" if coverage.probes else "")]
    for name, classes in coverage.classes.items():
        lines.append(
            f"classes predicted ({name}): {len(classes)}: {', '.join(map(str, classes[:20]))}"
            + (" ..." if len(classes) > 20 else "")
        )
    for name, seen in coverage.categories.items():
        probed = f"; probed: {', '.join(repr(c) for c in seen.probed)}" if seen.probed else ""
        lines.append(f"categories of {name}: {seen.seen} of {seen.vocabulary} in the rows{probed}")
    for name, count in coverage.nan_rows.items():
        lines.append(f"NaN in {name}: {count} rows")
    for name, span in coverage.ranges.items():
        reference = f"{span.reference[0]:.4g}..{span.reference[1]:.4g}" if span.reference else "no finite value"
        lines.append(
            f"range of {name}: fitted {span.fitted[0]:.4g}..{span.fitted[1]:.4g}, reference rows {reference} "
            f"({span.share:.0%} of it){', bounds probed' if span.probed else ''}"
        )
    lines += [f"probe: {reason}" for reason in coverage.probe_reasons]
    return lines


def strength_lines(manifest: Manifest) -> list[str]:
    """Everything above, for ``bundle inspect``."""
    return (
        [power_sentence(manifest.power)]
        + [f"  {line}" for line in tolerance_lines(manifest.tolerance)]
        + coverage_lines(manifest.coverage)
    )
