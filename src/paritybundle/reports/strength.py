"""How strong a verdict is, in words: each output's tolerance and the rule behind it, the reference
set's detection power and coverage (shared by the terminal, HTML and JUnit renderers)."""

from __future__ import annotations

from ..bundle.manifest import Coverage, Manifest, Power, TolerancePolicy

_RULES = {
    "spread": "0.1% of the spread of its research values",
    "noise": "the noise measured at export (torch vs ONNX Runtime), or float32 resolution at its magnitude",
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


def tolerance_lines(policy: TolerancePolicy) -> list[str]:
    """One line per output: its tolerance, and what set it."""
    lines = []
    for name, scale in policy.scales.items():
        tolerance = policy.for_output(name)
        rule = _RULES[scale.rule].format(device=policy.reference_device, precision=policy.reference_precision)
        bias = bias_resolution(policy, name)
        lines.append(f"{name}: atol {tolerance.atol:.3g}, rtol {tolerance.rtol:g} (atol from {rule}; values spread "
                     f"{scale.spread:.3g}, largest magnitude {scale.max_abs:.3g})"
                     + (f"; detects its values all scaled by more than x{1 + bias:.6g} (a {bias:.3%} bias)"
                        if bias is not None else ""))
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
    how = ("all the rows offered" if coverage.selection == "all"
           else f"{coverage.selected} covering rows of {coverage.candidates} offered")
    lines = [f"reference rows: {how}" + (f", and {coverage.probes} probe rows" if coverage.probes else "")]
    for name, classes in coverage.classes.items():
        lines.append(f"classes predicted ({name}): {len(classes)}: {', '.join(map(str, classes[:20]))}"
                     + (" ..." if len(classes) > 20 else ""))
    for name, seen in coverage.categories.items():
        probed = f"; probed: {', '.join(repr(c) for c in seen.probed)}" if seen.probed else ""
        lines.append(f"categories of {name}: {seen.seen} of {seen.vocabulary} in the rows{probed}")
    for name, count in coverage.nan_rows.items():
        lines.append(f"NaN in {name}: {count} rows")
    for name, span in coverage.ranges.items():
        reference = f"{span.reference[0]:.4g}..{span.reference[1]:.4g}" if span.reference else "no finite value"
        lines.append(f"range of {name}: fitted {span.fitted[0]:.4g}..{span.fitted[1]:.4g}, reference rows {reference} "
                     f"({span.share:.0%} of it){', bounds probed' if span.probed else ''}")
    lines += [f"probe: {reason}" for reason in coverage.probe_reasons]
    return lines


def strength_lines(manifest: Manifest) -> list[str]:
    """Everything above, for ``bundle inspect``."""
    return ([power_sentence(manifest.power)] + [f"  {line}" for line in tolerance_lines(manifest.tolerance)]
            + coverage_lines(manifest.coverage))
