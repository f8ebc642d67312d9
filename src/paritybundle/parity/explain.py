"""One sentence on a failing output: what failed, where, and what would have passed."""

from __future__ import annotations

from .results import OutputComparison


def explain_failure(c: OutputComparison) -> str:
    """One sentence on a failing output: what failed, where, and what would have passed."""
    if c.problem:
        return f"output {c.name!r} failed: {c.problem}."
    s = c.stats
    assert s is not None
    parts = []
    labels = c.decision is not None and c.decision.labels
    if c.budget is not None:
        over = c.budget.over(s)
        if over:
            parts.append(
                f"absolute error {', '.join(over)} over the declared budget "
                f"(p50 {c.budget.budget.p50:g}, p99 {c.budget.budget.p99:g}, max {c.budget.budget.max:g})"
            )
        if s.violations and c.tolerance.atol != c.budget.budget.max:  # a check-time tolerance, tighter than max
            parts.append(
                f"{s.violations} of {s.elements} elements outside the check-time atol {c.tolerance.atol:g} + "
                f"rtol {c.tolerance.rtol:g}*|research|"
            )
    elif s.violations and labels:
        pass  # a label output judged by agreement: the decision sentence below says it
    elif s.violations:
        parts.append(
            f"{s.violations} of {s.elements} elements outside atol {c.tolerance.atol:g} + "
            f"rtol {c.tolerance.rtol:g}*|research|"
        )
    if c.failing_sample_count and c.budget is None and not labels:
        parts.append(f"in {c.failing_sample_count} samples (worst first: {', '.join(map(str, c.failing_samples))})")
    if s.worst_index is not None and s.max_abs > 0 and not labels:  # a label's difference is no distance
        where = (
            f" (reference group {c.worst_group}, its sample {c.worst_group_sample})"
            if c.worst_group is not None
            else ""
        )
        parts.append(
            f"largest error {s.max_abs:.3g} at index {s.worst_index}{where} "
            f"(serving {s.worst_serve!r}, research {s.worst_research!r})"
        )
    if c.decision is not None and c.decision.agreement < c.decision.min_agreement:
        what = "labels agree" if labels else "argmax agrees"
        parts.append(
            f"{what} on {c.decision.agreement:.2%} of {c.decision.unit}, below {_share(c.decision.min_agreement)} "
            f"(flipped samples: {c.decision.disagreeing_samples})"
        )
    if c.decision is not None and c.decision.tie_share > c.decision.max_tie_share:
        parts.append(
            f"{c.decision.ties} of {c.decision.samples} {c.decision.unit} ({c.decision.tie_share:.1%}) changed class "
            f"between near-equal research scores, over the {c.decision.max_tie_share:.0%} the tie rule may "
            "excuse: the scores are too flat to tell the classes apart at this tolerance"
        )
    if s.nonfinite_mismatches:
        parts.append(f"{s.nonfinite_mismatches} NaN/inf mismatches")
    elif s.violations and s.required_atol is not None and c.budget is None and not labels:
        parts.append(f"an atol of {s.required_atol:.3g} would have passed")
    return f"output {c.name!r} failed: " + "; ".join(parts) + "."


def _share(value: float) -> str:
    """``99%``, or ``98.50%`` where whole percents would round the bound."""
    return f"{value:.0%}" if float(round(value * 100, 9)).is_integer() else f"{value:.2%}"
