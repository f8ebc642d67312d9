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

from .manifest import Tolerance
from .strict import StrictModel

REL_EPSILON = 1e-12
# How many offending samples a result lists (the rest are counted).
MAX_LISTED_SAMPLES = 10


class ErrorStats(StrictModel):
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


class DecisionStats(StrictModel):
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


class ErrorHistogram(StrictModel):
    """Counts of absolute and relative errors in log10 bins (for plots, e.g. ``check --html``).

    Bin ``k`` holds values in ``[10**edges[k], 10**edges[k+1])``; values below the first edge
    fall in bin 0, values at or above the last (and infinities) in the last bin; exact
    matches (error 0) are counted apart.
    """

    log10_edges: list[float]
    abs_counts: list[int]
    abs_zero: int
    rel_counts: list[int]
    rel_zero: int


HISTOGRAM_LOW, HISTOGRAM_HIGH, HISTOGRAM_STEP = -12.0, 4.0, 0.25


class _Histogram:
    """Streams values into the fixed log10 bins of :class:`ErrorHistogram`."""

    bins = int((HISTOGRAM_HIGH - HISTOGRAM_LOW) / HISTOGRAM_STEP)

    def __init__(self) -> None:
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.zero = 0

    def add(self, values: np.ndarray) -> None:
        positive = values[values > 0]
        self.zero += int(values.size - positive.size - np.isnan(values).sum())
        if positive.size:
            with np.errstate(divide="ignore"):
                position = (np.log10(positive) - HISTOGRAM_LOW) / HISTOGRAM_STEP
            index = np.clip(np.nan_to_num(position, posinf=self.bins - 1), 0, self.bins - 1).astype(np.int64)
            self.counts += np.bincount(index, minlength=self.bins)


class OutputComparison(StrictModel):
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
    # Only when asked for (check --html): the error distributions.
    histogram: ErrorHistogram | None = None

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
    research = np.asarray(research)
    if research.dtype.kind == "f":
        # Finiteness is checked on the source (float32 is half the bytes of the float64 result).
        finite = bool(np.isfinite(research).all())
        magnitude = np.abs(research, dtype=np.float64)
    else:
        finite, magnitude = True, np.abs(upcast(research)).astype(np.float64)
    if not finite:
        magnitude[~np.isfinite(magnitude)] = 0.0
    return magnitude


def _relative(abs_error: np.ndarray, magnitude: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    divisor = np.maximum(magnitude, REL_EPSILON, out=out)
    return np.divide(abs_error, divisor, out=divisor)


def relative_error(abs_error: np.ndarray, research: np.ndarray) -> np.ndarray:
    """Absolute error over ``max(|research|, 1e-12)``.

    Where research is NaN or inf the error is 0 (matched) or inf (mismatched), so the
    magnitude used there does not change the result.
    """
    return _relative(abs_error, magnitude_of(research))


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values (unordered). A strided sample picks a threshold first, so a
    large array is filtered to a few candidates before the exact selection."""
    flat = values.reshape(-1)
    if k <= 0:
        return flat[:0]
    if flat.size <= k:
        return flat
    if flat.size > 4096:
        sample = flat[::16]
        # Aim a little low, so that the candidates very likely include all k.
        cut = int(max(0.0, 1.0 - 1.5 * k / flat.size) * (sample.size - 1))
        threshold = np.partition(sample, cut)[cut]
        candidates = flat[flat >= threshold]
        if candidates.size >= k:
            flat = candidates
    return np.partition(flat, flat.size - k)[flat.size - k:]


def _p99_position(n: int) -> tuple[int, float]:
    """``np.percentile``'s linear interpolation: the lower order statistic and the fraction."""
    position = 0.99 * (n - 1)
    low = int(math.floor(position))
    return low, position - low


def _p99_from_top(top: np.ndarray, n: int) -> float:
    """p99 of ``n`` values given (at least) their ``n - low`` largest."""
    low, fraction = _p99_position(n)
    ordered = np.sort(top)[-(n - low):]
    lo_value = float(ordered[0])
    hi_value = float(ordered[1]) if ordered.size > 1 else lo_value
    return lo_value + (hi_value - lo_value) * fraction if fraction and hi_value != lo_value else lo_value


def percentile99(values: np.ndarray) -> float:
    """Exactly ``np.percentile(values, 99)`` (linear interpolation), selecting only the top 1%.

    NaN-free input is assumed (errors map NaN mismatches to inf).
    """
    n = values.size
    low, _ = _p99_position(n)
    return _p99_from_top(_largest(values, n - low), n)


# Up to this many elements per output, every error is kept (16 MB of float64) and p99 is
# taken once at the end; beyond it, only the running largest 1% is kept.
KEEP_ALL_ELEMENTS = 2_000_000


class OutputAccumulator:
    """One output's comparison, fed batch by batch; :meth:`finish` gives the verdict.

    Memory stays bounded however many samples are checked: sums, maxima and the worst
    element stream exactly, and the exact p99 needs at most the largest 1% of values
    (the total count is known up front), kept between batches.

    Args:
        name, tolerance, scores, min_decision_agreement, baseline_max_abs,
        baseline_factor, tie_tolerance: as in :func:`compare_output`.
        total_elements: how many elements all batches together will hold.
    """

    def __init__(self, name: str, tolerance: Tolerance, total_elements: int, *, scores: bool = False,
                 min_decision_agreement: float = 1.0, baseline_max_abs: float | None = None,
                 baseline_factor: float | None = None, tie_tolerance: Tolerance | None = None,
                 histogram: bool = False) -> None:
        self.name, self.tolerance, self.total = name, tolerance, int(total_elements)
        self.histograms = (_Histogram(), _Histogram()) if histogram else None
        self.scores, self.min_decision_agreement = scores, min_decision_agreement
        self.baseline_max_abs, self.baseline_factor = baseline_max_abs, baseline_factor
        self.tie_tolerance = tie_tolerance or tolerance
        self._keep = self.total - _p99_position(max(self.total, 1))[0]
        # Once the buffers hold `_keep` values, nothing below the smallest of them can matter.
        self._floors = {"abs": -math.inf, "rel": -math.inf}
        self._keep_all = self.total <= KEEP_ALL_ELEMENTS
        self.problem: str | None = None
        self.elements = self.violations = self.nonfinite = 0
        self.sum_abs = self.sum_rel = 0.0
        self.max_abs = self.max_rel = self.max_ratio = 0.0
        self.required: float | None = None
        self.worst: tuple[list[int], float | None, float | None] | None = None
        self.top_abs: list[np.ndarray] = []
        self.top_rel: list[np.ndarray] = []
        self.failing: list[tuple[float, int]] = []
        self.failing_count = 0
        self.samples = self.agreeing = self.ties = 0
        self.disagreeing: list[int] = []
        self.exact = False

    def _keep_top(self, which: str, buffers: list[np.ndarray], values: np.ndarray) -> None:
        if self._keep_all:
            buffers.append(values)  # fresh arrays made by add(); selected once, at the end
            return
        floor = self._floors[which]
        if floor > -math.inf:
            values = values[values > floor]  # one cheap pass; usually almost nothing survives
        buffers.append(_largest(values, self._keep))
        if sum(b.size for b in buffers) > 4 * self._keep + 4096:
            merged = _largest(np.concatenate(buffers), self._keep)
            buffers[:] = [merged]
            if merged.size == self._keep:
                self._floors[which] = float(merged.min())

    def add(self, serve: np.ndarray, research: np.ndarray, first_sample: int = 0) -> None:
        """Compare one batch; ``first_sample`` is its first row's index in the whole set."""
        serve, research = np.asarray(serve), np.asarray(research)
        if self.problem is not None:
            return
        if serve.shape != research.shape:
            self.problem = (f"shape {list(serve.shape)} differs from the research shape {list(research.shape)}"
                            + (f" (batch from sample {first_sample})" if first_sample else ""))
            return
        exact = is_exact_dtype(research) or is_exact_dtype(serve)
        if serve.dtype.kind in "USO" or research.dtype.kind in "USO":
            abs_err = np.where(serve != research, np.inf, 0.0)
            research = np.zeros(research.shape)
            exact = True
        else:
            abs_err = absolute_error(serve, research, self.tolerance.equal_nan)
        self.exact = self.exact or exact
        flat_abs = abs_err.reshape(-1)
        if flat_abs.size == 0:
            return
        worst = int(np.argmax(flat_abs))
        finite = bool(np.isfinite(flat_abs[worst]))  # inf marks every NaN/inf mismatch
        magnitude = magnitude_of(research).reshape(-1)
        tol = self.tolerance

        if self.worst is None or flat_abs[worst] > self.max_abs:
            index = [int(i) for i in np.unravel_index(worst, abs_err.shape)]
            if index:
                index[0] += first_sample
            self.max_abs = float(flat_abs[worst])
            self.worst = (index, _as_float(serve.reshape(-1)[worst]) if serve.dtype.kind not in "USO" else None,
                          _as_float(research.reshape(-1)[worst]))
        if not finite:
            self.nonfinite += int(np.isinf(flat_abs).sum())

        bad = None
        if exact:
            bad = flat_abs != 0
            batch_violations = int(np.count_nonzero(bad))
            if batch_violations:
                self.max_ratio = math.inf
                self.required = math.inf
        else:
            allowed = np.multiply(magnitude, tol.rtol)
            allowed += tol.atol
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.divide(flat_abs, allowed)
            if tol.atol == 0:
                ratios[flat_abs == 0] = 0.0  # 0/0 where research is 0: an exact match
            batch_ratio = float(np.max(ratios))
            self.max_ratio = max(self.max_ratio, batch_ratio)
            batch_violations = 0
            # abs > allowed implies abs/allowed >= 1 after rounding, so a ratio under 1 proves
            # there is no violation without building the mask (the common, passing case).
            if not batch_ratio < 1.0:
                bad = flat_abs > allowed
                batch_violations = int(np.count_nonzero(bad))
            if batch_violations:
                # Only violating elements can set the smallest passing atol (the rest are <= atol).
                excess = float(np.max(flat_abs[bad] - (allowed[bad] - tol.atol)))
                self.required = excess if self.required is None else max(self.required, excess)
        self.violations += batch_violations

        rel = _relative(flat_abs, magnitude, out=magnitude)  # the magnitude is not needed after this
        if self.histograms is not None:
            self.histograms[0].add(flat_abs)
            self.histograms[1].add(rel)
        self.sum_abs += float(np.sum(flat_abs))
        self.sum_rel += float(np.sum(rel))
        self.max_rel = max(self.max_rel, float(np.max(rel)))
        self.elements += flat_abs.size
        self._keep_top("abs", self.top_abs, flat_abs)
        self._keep_top("rel", self.top_rel, rel)

        if batch_violations and abs_err.ndim:
            rows = abs_err.shape[0]
            per_sample_bad = bad.reshape(rows, -1).any(axis=1)
            self.failing_count += int(per_sample_bad.sum())
            errors = abs_err.reshape(rows, -1).max(axis=1)
            candidates = [(float(errors[i]), int(i) + first_sample) for i in np.flatnonzero(per_sample_bad)]
            self.failing = sorted(self.failing + candidates, key=lambda c: -c[0])[:MAX_LISTED_SAMPLES]

        if self.scores and not exact and research.ndim >= 1 and research.size:
            decision = decision_agreement(serve, research, self.tie_tolerance, self.min_decision_agreement)
            self.samples += decision.samples
            self.agreeing += decision.agreeing
            self.ties += decision.ties
            room = MAX_LISTED_SAMPLES - len(self.disagreeing)
            self.disagreeing += [i + first_sample for i in decision.disagreeing_samples[:room]]

    def _p99(self, buffers: list[np.ndarray], n: int) -> float:
        kept = buffers[0] if len(buffers) == 1 else np.concatenate(buffers)
        return percentile99(kept) if self._keep_all else _p99_from_top(kept, n)

    def finish(self) -> OutputComparison:
        if self.problem is not None:
            return OutputComparison(name=self.name, passed=False, tolerance=self.tolerance, stats=None,
                                    problem=self.problem)
        n = self.elements
        if n == 0:
            stats = ErrorStats(elements=0, max_abs=0, mean_abs=0, p99_abs=0, max_rel=0, mean_rel=0, p99_rel=0,
                               violations=0, nonfinite_mismatches=0, worst_sample=None, worst_index=None,
                               worst_serve=None, worst_research=None, required_atol=0, max_tolerance_ratio=0)
        else:
            if n != self.total:  # the p99 bookkeeping assumed `total`; recompute from what was kept
                self._keep = n - _p99_position(n)[0]
            index, worst_serve, worst_research = self.worst or (None, None, None)
            stats = ErrorStats(
                elements=n, max_abs=self.max_abs, mean_abs=self.sum_abs / n,
                p99_abs=self._p99(self.top_abs, n),
                max_rel=self.max_rel, mean_rel=self.sum_rel / n,
                p99_rel=self._p99(self.top_rel, n),
                violations=self.violations, nonfinite_mismatches=self.nonfinite,
                worst_sample=index[0] if index else None, worst_index=index or None,
                worst_serve=worst_serve, worst_research=worst_research,
                required_atol=(math.inf if self.nonfinite else self.required) if self.violations else None,
                max_tolerance_ratio=self.max_ratio,
            )
        decision = None
        if self.scores and not self.exact and self.samples:
            decision = DecisionStats(samples=self.samples, agreeing=self.agreeing, ties=self.ties,
                                     agreement=self.agreeing / self.samples, min_agreement=self.min_decision_agreement,
                                     disagreeing_samples=self.disagreeing)
        passed = stats.violations == 0 and (decision is None or decision.passed)
        above = False
        if self.baseline_max_abs is not None and self.baseline_factor is not None:
            # A floor of a few float32 ulps at 1.0 keeps a zero baseline from flagging noise.
            above = stats.max_abs > self.baseline_factor * max(self.baseline_max_abs, 1e-6)
        return OutputComparison(
            name=self.name, passed=passed, tolerance=self.tolerance, stats=stats, decision=decision,
            failing_samples=[i for _, i in self.failing], failing_sample_count=self.failing_count,
            baseline_max_abs=self.baseline_max_abs, above_baseline=above, histogram=self._histogram(),
        )

    def _histogram(self) -> ErrorHistogram | None:
        if self.histograms is None:
            return None
        absolute, relative = self.histograms
        edges = [HISTOGRAM_LOW + k * HISTOGRAM_STEP for k in range(_Histogram.bins + 1)]
        return ErrorHistogram(log10_edges=edges, abs_counts=absolute.counts.tolist(), abs_zero=absolute.zero,
                              rel_counts=relative.counts.tolist(), rel_zero=relative.zero)


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
    accumulator = OutputAccumulator(
        name, tolerance, research.size, scores=scores, min_decision_agreement=min_decision_agreement,
        baseline_max_abs=baseline_max_abs, baseline_factor=baseline_factor, tie_tolerance=tie_tolerance)
    accumulator.add(serve, research)
    return accumulator.finish()


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
