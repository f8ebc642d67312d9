"""The comparison engine: small pure functions from arrays to verdicts.

Nothing here logs, reads config or touches a backend; it sees arrays and a
:class:`~paritybundle.manifest.Tolerance` and returns result objects that are
truthy when parity holds.

Rules (each has its own test in ``tests/test_parity.py``):

* Arrays are upcast to float64 before subtracting, so the comparison adds no error.
* An element matches when ``|serve - research| <= atol + rtol * |research|``.
* NaN matches only NaN, and only when the tolerance's ``equal_nan`` is true.
* An infinity matches only the same infinity.
* Relative error divides by ``max(|research|, 1e-12)`` so zeros do not divide by zero.
* Integer, bool and string outputs must match exactly.
* Decision agreement (outputs of kind ``scores``): argmax per sample. A flip between
  two classes whose research scores are within twice the *tie tolerance* of each
  other is a tie, not a disagreement, and is counted separately. The tie tolerance
  is the bundle's noise-scale default, not a loosened per-output override, so
  loosening an output's values never loosens its decisions.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict

from .manifest import Tolerance

REL_EPSILON = 1e-12
# How many offending samples a result lists (the rest are counted).
MAX_LISTED_SAMPLES = 10


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorStats(_Result):
    """Error statistics of one output over all its elements."""

    elements: int
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float
    violations: int
    nonfinite_mismatches: int
    worst_sample: int | None
    worst_index: list[int] | None
    worst_serve: float | None
    worst_research: float | None
    # The smallest atol that would have passed at the same rtol (inf: no atol would);
    # computed for failing outputs only (None when the output passed).
    required_atol: float | None
    # The largest error as a share of its element's allowed error (> 1 fails): the headroom.
    max_tolerance_ratio: float


class DecisionStats(_Result):
    """Argmax agreement over samples for an output of class scores."""

    samples: int
    agreeing: int
    ties: int
    agreement: float
    min_agreement: float
    disagreeing_samples: list[int]

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement


class OutputComparison(_Result):
    """The verdict on one output; truthy when it passed."""

    name: str
    passed: bool
    tolerance: Tolerance
    stats: ErrorStats | None
    decision: DecisionStats | None = None
    failing_samples: list[int] = []
    failing_sample_count: int = 0
    problem: str | None = None
    baseline_max_abs: float | None = None
    above_baseline: bool = False

    def __bool__(self) -> bool:
        return self.passed


def upcast(array: np.ndarray) -> np.ndarray:
    """float64 for floating data, int64 for integers and bools, unchanged otherwise."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        return array.astype(np.float64, copy=False)
    if array.dtype.kind in "iub":
        return array.astype(np.int64, copy=False)
    return array


def is_exact_dtype(array: np.ndarray) -> bool:
    """Integer, bool and string data is compared exactly."""
    return np.asarray(array).dtype.kind not in "fc"


def absolute_error(serve: np.ndarray, research: np.ndarray, equal_nan: bool = True) -> np.ndarray:
    """``|serve - research|`` with NaN and inf handled by the rules above.

    Matching non-finite values give 0; mismatching ones give ``inf``.
    """
    serve, research = np.asarray(serve), np.asarray(research)
    if serve.dtype.kind != "f" or research.dtype.kind != "f":
        serve, research = upcast(serve), upcast(research)
    # Subtracting into float64 directly upcasts without two float64 copies of the inputs.
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.subtract(serve, research, dtype=np.float64)
    np.abs(diff, out=diff)
    # NaN and inf on either side propagate into the difference: one pass finds them.
    if np.isfinite(diff).all():
        return diff
    finite = np.isfinite(serve) & np.isfinite(research)
    both_nan = np.isnan(serve) & np.isnan(research)
    same_inf = np.isinf(serve) & np.isinf(research) & (serve == research)
    matched = same_inf | (both_nan if equal_nan else np.zeros_like(both_nan))
    return np.where(finite, diff, np.where(matched, 0.0, np.inf))


def magnitude_of(research: np.ndarray) -> np.ndarray:
    """``|research|`` in float64, non-finite values counted as 0 (their bound is atol)."""
    magnitude = np.abs(np.asarray(research), dtype=np.float64) if np.asarray(research).dtype.kind == "f" \
        else np.abs(upcast(research)).astype(np.float64)
    if not np.isfinite(magnitude).all():
        magnitude[~np.isfinite(magnitude)] = 0.0
    return magnitude


def relative_error(abs_error: np.ndarray, research: np.ndarray) -> np.ndarray:
    """Absolute error over ``max(|research|, 1e-12)``; non-finite research counts as 1."""
    magnitude = np.abs(upcast(research)).astype(np.float64)
    magnitude = np.where(np.isfinite(magnitude), magnitude, 1.0)
    return abs_error / np.maximum(magnitude, REL_EPSILON)


def allowed_error(research: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    """The per-element bound ``atol + rtol * |research|`` (NaN/inf research: atol)."""
    return tolerance.atol + tolerance.rtol * magnitude_of(research)


def violation_mask(abs_error: np.ndarray, research: np.ndarray, tolerance: Tolerance, exact: bool,
                   magnitude: np.ndarray | None = None) -> np.ndarray:
    """True where an element is outside tolerance (any difference, for exact dtypes)."""
    if exact:
        return abs_error != 0
    if magnitude is None:
        magnitude = magnitude_of(research)
    return abs_error > tolerance.atol + tolerance.rtol * magnitude


def percentile99(values: np.ndarray) -> float:
    """Exactly ``np.percentile(values, 99)`` (linear interpolation), without sorting everything.

    Only the top 1% matters, so a strided sample gives a threshold, the elements at or
    above it are the candidates, and the two order statistics are selected among them.
    When the sample's threshold is too high (too few candidates), the whole array is
    partitioned instead. NaN-free input is assumed (errors map NaN mismatches to inf).
    """
    flat = values.reshape(-1)
    n = flat.size
    position = 0.99 * (n - 1)
    low = int(math.floor(position))
    high = min(low + 1, n - 1)
    fraction = position - low
    pool, offset = flat, 0
    if n > 4096:
        sample = flat[::16]
        # Aim a little below the 99th percentile so that the candidates very likely cover it.
        cut = int(0.985 * (sample.size - 1))
        threshold = np.partition(sample, cut)[cut]
        candidates = flat[flat >= threshold]
        if candidates.size >= n - low:  # every element below the threshold ranks below `low`
            pool, offset = candidates, n - candidates.size
    part = np.partition(pool, (low - offset, high - offset))
    lo_value, hi_value = float(part[low - offset]), float(part[high - offset])
    return lo_value + (hi_value - lo_value) * fraction if fraction and hi_value != lo_value else lo_value


def summarize(abs_error: np.ndarray, research: np.ndarray, tolerance: Tolerance, exact: bool = False,
              magnitude: np.ndarray | None = None) -> ErrorStats:
    """Statistics of one output's errors; the worst element is the largest absolute error.

    One buffer holds the allowed error, then the tolerance ratio; another the
    magnitude, then the relative error. This runs on every reference element of
    every check, so each pass over the data counts next to inference.
    """
    flat_abs = abs_error.reshape(-1)
    if flat_abs.size == 0:
        return ErrorStats(elements=0, max_abs=0, mean_abs=0, p99_abs=0, max_rel=0, mean_rel=0, p99_rel=0,
                          violations=0, nonfinite_mismatches=0, worst_sample=None, worst_index=None,
                          worst_serve=None, worst_research=None, required_atol=0, max_tolerance_ratio=0)
    magnitude = (magnitude_of(research) if magnitude is None else magnitude.copy()).reshape(-1)
    worst_flat = int(np.argmax(flat_abs))
    worst_index = [int(i) for i in np.unravel_index(worst_flat, abs_error.shape)]
    nonfinite = 0 if np.isfinite(flat_abs[worst_flat]) else int(np.isinf(flat_abs).sum())

    if exact:
        violations = int(np.count_nonzero(flat_abs))
        max_ratio = math.inf if violations else 0.0
        required: float | None = math.inf if violations else 0.0
    else:
        allowed = np.multiply(magnitude, tolerance.rtol)
        allowed += tolerance.atol
        violations = int(np.count_nonzero(flat_abs > allowed))
        # Only a failure needs the smallest passing atol; skipping it spares two passes.
        required = None
        if violations:
            required = math.inf if nonfinite else float(max(0.0, np.max(flat_abs - (allowed - tolerance.atol))))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.divide(flat_abs, allowed, out=allowed)
        if tolerance.atol == 0:
            ratios[flat_abs == 0] = 0.0  # 0/0 where research is 0: an exact match
        max_ratio = float(np.max(ratios))

    rel = np.maximum(magnitude, REL_EPSILON, out=magnitude)
    rel = np.divide(flat_abs, rel, out=rel)
    return ErrorStats(
        elements=int(flat_abs.size),
        max_abs=float(flat_abs[worst_flat]),
        mean_abs=float(np.mean(flat_abs)),
        p99_abs=percentile99(flat_abs),
        max_rel=float(np.max(rel)),
        mean_rel=float(np.mean(rel)),
        p99_rel=percentile99(rel),
        violations=violations,
        nonfinite_mismatches=nonfinite,
        worst_sample=worst_index[0] if abs_error.ndim else None,
        worst_index=worst_index,
        worst_serve=None,
        worst_research=_as_float(np.asarray(research).reshape(-1)[worst_flat]),
        required_atol=required,
        max_tolerance_ratio=max_ratio,
    )


def _as_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def decision_agreement(serve: np.ndarray, research: np.ndarray, tolerance: Tolerance, min_agreement: float) -> DecisionStats:
    """Share of samples whose argmax over the last axis agrees.

    A sample whose serving argmax differs is a tie (not a disagreement) when the
    research scores of the two classes are within tolerance of each other: noise
    may legitimately flip a near-tie, and the element-wise check still applies.
    """
    # argmax is the same on the original dtype (casting is monotonic); only margins need float64.
    serve, research = np.asarray(serve), np.asarray(research)
    samples = research.shape[0] if research.ndim else 0
    flat_serve = serve.reshape(samples, -1) if samples else serve.reshape(0, 1)
    flat_research = research.reshape(samples, -1) if samples else research.reshape(0, 1)
    research_top = np.argmax(flat_research, axis=1)
    serve_top = np.argmax(flat_serve, axis=1)
    differs = research_top != serve_top
    rows = np.arange(samples)
    top_score = flat_research[rows, research_top].astype(np.float64)
    rival_score = flat_research[rows, serve_top].astype(np.float64)
    margin = np.abs(top_score - rival_score)
    bound = tolerance.atol + tolerance.rtol * np.abs(top_score)
    tie = differs & (margin <= 2 * bound)
    disagree = differs & ~tie
    agreeing = samples - int(disagree.sum())
    return DecisionStats(
        samples=samples,
        agreeing=agreeing,
        ties=int(tie.sum()),
        agreement=agreeing / samples if samples else 1.0,
        min_agreement=min_agreement,
        disagreeing_samples=[int(i) for i in np.flatnonzero(disagree)[:MAX_LISTED_SAMPLES]],
    )


def compare_output(
    name: str,
    serve: np.ndarray,
    research: np.ndarray,
    tolerance: Tolerance,
    *,
    scores: bool = False,
    min_decision_agreement: float = 1.0,
    baseline_max_abs: float | None = None,
    baseline_factor: float | None = None,
    tie_tolerance: Tolerance | None = None,
) -> OutputComparison:
    """Compare one output; the result is truthy when parity holds.

    Args:
        name: the output's name, carried into the result.
        serve: what serving computed.
        research: the research outputs.
        tolerance: the element-wise rule.
        scores: also check argmax agreement over the last axis.
        min_decision_agreement: the least share of agreeing samples.
        baseline_max_abs: the export-time torch-vs-ORT max error, if known.
        baseline_factor: flag errors this many times above the baseline.
        tie_tolerance: what makes two research scores a near-tie (default: ``tolerance``).

    Returns:
        An :class:`OutputComparison`.

    Example:
        >>> bool(compare_output("y", np.ones(3), np.ones(3), Tolerance(atol=0, rtol=0)))
        True
    """
    serve, research = np.asarray(serve), np.asarray(research)
    if serve.shape != research.shape:
        return OutputComparison(
            name=name, passed=False, tolerance=tolerance, stats=None,
            problem=f"shape {list(serve.shape)} differs from the research shape {list(research.shape)}",
        )
    exact = is_exact_dtype(research) or is_exact_dtype(serve)
    if serve.dtype.kind in "USO" or research.dtype.kind in "USO":
        abs_err = (serve != research).astype(np.float64)
        abs_err = np.where(abs_err > 0, np.inf, 0.0)
        exact = True
    else:
        abs_err = absolute_error(serve, research, tolerance.equal_nan)
    research_numeric = research if research.dtype.kind not in "USO" else np.zeros(research.shape)
    stats = summarize(abs_err, research_numeric, tolerance, exact)
    if stats.worst_index is not None and serve.dtype.kind not in "USO":
        stats = stats.model_copy(update={"worst_serve": _as_float(serve[tuple(stats.worst_index)])})

    failing_count, failing = 0, []
    if stats.violations and abs_err.ndim:
        # The failure path: recompute the mask to locate the failing samples.
        violations = violation_mask(abs_err, research_numeric, tolerance, exact)
        per_sample = violations.reshape(violations.shape[0], -1)
        bad = per_sample.any(axis=1)
        failing_count = int(bad.sum())
        if failing_count:
            excess = abs_err.reshape(violations.shape[0], -1).max(axis=1)
            order = np.argsort(-excess[bad], kind="stable")
            failing = [int(i) for i in np.flatnonzero(bad)[order][:MAX_LISTED_SAMPLES]]

    decision = None
    if scores and not exact and research.ndim >= 1 and research.size:
        decision = decision_agreement(serve, research, tie_tolerance or tolerance, min_decision_agreement)

    passed = stats.violations == 0 and (decision is None or decision.passed)
    above = False
    if baseline_max_abs is not None and baseline_factor is not None:
        # A floor of a few float32 ulps at 1.0 keeps a zero baseline from flagging noise.
        above = stats.max_abs > baseline_factor * max(baseline_max_abs, 1e-6)
    return OutputComparison(
        name=name, passed=passed, tolerance=tolerance, stats=stats, decision=decision,
        failing_samples=failing, failing_sample_count=failing_count,
        baseline_max_abs=baseline_max_abs, above_baseline=above,
    )


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
        parts.append(f"largest error {s.max_abs:.3g} at index {s.worst_index} "
                     f"(serving {s.worst_serve!r}, research {s.worst_research!r})")
    if c.decision is not None and not c.decision.passed:
        parts.append(f"argmax agrees on {c.decision.agreement:.2%} of samples, below {c.decision.min_agreement:.0%} "
                     f"(disagreeing samples: {c.decision.disagreeing_samples})")
    if s.nonfinite_mismatches:
        parts.append(f"{s.nonfinite_mismatches} NaN/inf mismatches")
    elif s.violations and s.required_atol is not None:
        parts.append(f"an atol of {s.required_atol:.3g} would have passed")
    return f"output {c.name!r} failed: " + "; ".join(parts) + "."
