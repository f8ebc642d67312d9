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
    if s.violations:
        parts.append(f"{s.violations} of {s.elements} elements outside atol {c.tolerance.atol:g} + "
                     f"rtol {c.tolerance.rtol:g}*|research|")
    if c.failing_sample_count:
        parts.append(f"in {c.failing_sample_count} samples (worst first: {', '.join(map(str, c.failing_samples))})")
    if s.worst_index is not None and s.max_abs > 0:
        where = (f" (reference group {c.worst_group}, its sample {c.worst_group_sample})"
                 if c.worst_group is not None else "")
        parts.append(f"largest error {s.max_abs:.3g} at index {s.worst_index}{where} "
                     f"(serving {s.worst_serve!r}, research {s.worst_research!r})")
    if c.decision is not None and c.decision.agreement < c.decision.min_agreement:
        parts.append(f"argmax agrees on {c.decision.agreement:.2%} of {c.decision.unit}, below {c.decision.min_agreement:.0%} "
                     f"(disagreeing samples: {c.decision.disagreeing_samples})")
    if c.decision is not None and c.decision.tie_share > c.decision.max_tie_share:
        parts.append(f"{c.decision.ties} of {c.decision.samples} {c.decision.unit} ({c.decision.tie_share:.1%}) changed class "
                     f"between near-equal research scores, over the {c.decision.max_tie_share:.0%} the tie rule may "
                     "excuse: the scores are too flat to tell the classes apart at this tolerance")
    if s.nonfinite_mismatches:
        parts.append(f"{s.nonfinite_mismatches} NaN/inf mismatches")
    elif s.violations and s.required_atol is not None:
        parts.append(f"an atol of {s.required_atol:.3g} would have passed")
    return f"output {c.name!r} failed: " + "; ".join(parts) + "."
