"""One output's comparison, fed batch by batch: the verdict of the rules below.

Nothing here logs, reads config or touches a backend; it sees arrays and a
:class:`~paritybundle.bundle.manifest.Tolerance` and returns result objects that are
truthy when parity holds.

Rules (each has its own test in ``tests/test_parity.py``):

* Arrays are upcast to float64 before subtracting, so the comparison adds no error.
* An element matches when ``|serve - research| <= atol + rtol * |research|``.
* NaN matches only NaN, and only when the tolerance's ``equal_nan`` is true.
* An infinity matches only the same infinity.
* Relative error divides by ``max(|research|, 1e-12)`` so zeros do not divide by zero.
* Integer, bool and string outputs must match exactly.
* Decision agreement (outputs of kind ``scores``): argmax per sample, or per position
  (token, pixel) for outputs of rank > 2. A flip between
  two classes whose research scores are within twice the *tie tolerance* of each
  other is a tie, not a disagreement, and is counted separately. The tie tolerance
  is the output's own tolerance in the bundle (scaled to the output), not a loosened
  check-time override, so loosening an output's values never loosens its decisions;
  and when more than ``max_tie_share`` of the samples are decided as ties, the output
  fails: its scores are too flat for the check to tell classes apart.
* A declared error budget (a serving graph that approximates research by design, e.g. int8):
  the element-wise bound is the budget's ``max``, and the median and p99 of the absolute
  errors must stay within its ``p50`` and ``p99``; decisions must agree on at least
  ``min_decision_agreement`` of the samples, and an integer, bool or string output (a label)
  is judged the same way, by the share of its elements equal to research's.
"""

from __future__ import annotations

import math

import numpy as np

from ..bundle.manifest import ErrorBudget, Tolerance
from .decision import decision_agreement
from .elementwise import (
    absolute_error,
    is_exact_dtype,
    largest,
    magnitude_of,
    p99_from_top,
    p99_position,
    percentile99,
    relative_to,
)
from .histogram import HISTOGRAM_LOW, HISTOGRAM_STEP, LogHistogram
from .results import MAX_LISTED_SAMPLES, BudgetStats, DecisionStats, ErrorHistogram, ErrorStats, OutputComparison

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
        budget: a declared error budget judging this output (``tolerance`` is then its element-wise bound).
        decide_labels: judge an integer, bool or string output by the share of equal elements
            (at least ``min_decision_agreement``) instead of requiring all of them: a serving graph that
            approximates research by design may change a few labels.
    """

    def __init__(
        self,
        name: str,
        tolerance: Tolerance,
        total_elements: int,
        *,
        scores: bool = False,
        min_decision_agreement: float = 1.0,
        baseline_max_abs: float | None = None,
        baseline_factor: float | None = None,
        tie_tolerance: Tolerance | None = None,
        histogram: bool = False,
        max_tie_share: float = 1.0,
        budget: ErrorBudget | None = None,
        decide_labels: bool = False,
    ) -> None:
        self.name, self.tolerance, self.total = name, tolerance, int(total_elements)
        self.histograms = (LogHistogram(), LogHistogram()) if histogram else None
        self.budget, self.decide_labels = budget, decide_labels
        # Past the elements whose errors are all kept, the median of a budget is bounded from a histogram.
        self.median = LogHistogram() if budget is not None else None
        self.rows = 0
        self.scores, self.min_decision_agreement = scores, min_decision_agreement
        self.baseline_max_abs, self.baseline_factor = baseline_max_abs, baseline_factor
        self.tie_tolerance = tie_tolerance or tolerance
        self.max_tie_share = max_tie_share
        self._keep = self.total - p99_position(max(self.total, 1))[0]
        # Once the buffers hold `_keep` values, nothing below the smallest of them can matter.
        self._floors = {"abs": -math.inf, "rel": -math.inf}
        self._keep_all = self.total <= KEEP_ALL_ELEMENTS  # pragma: no mutate (both ways are exact)
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
        self.per_position = False
        self.disagreeing: list[int] = []
        self.exact = False

    def _keep_top(self, which: str, buffers: list[np.ndarray], values: np.ndarray) -> None:
        if self._keep_all:
            buffers.append(values)  # fresh arrays made by add(); selected once, at the end
            return
        floor = self._floors[which]
        # Mutation testing skips the lines marked "no mutate" (docs/mutation.md): they decide only how
        # much memory and time the exact answer takes (when to filter, when to merge), not the answer.
        if floor > -math.inf:  # pragma: no mutate
            values = values[values > floor]  # pragma: no mutate (one cheap pass; almost nothing survives)
        buffers.append(largest(values, self._keep))
        if sum(b.size for b in buffers) > 4 * self._keep + 4096:  # pragma: no mutate
            merged = largest(np.concatenate(buffers), self._keep)
            buffers[:] = [merged]
            if merged.size == self._keep:  # pragma: no mutate (a merge always holds at least `_keep`)
                self._floors[which] = float(merged.min())

    def add(self, serve: np.ndarray, research: np.ndarray, first_sample: int = 0) -> None:
        """Compare one batch; ``first_sample`` is its first row's index in the whole set."""
        serve, research = np.asarray(serve), np.asarray(research)
        if self.problem is not None:
            return
        if serve.shape != research.shape:
            self.problem = f"shape {list(serve.shape)} differs from the research shape {list(research.shape)}" + (
                f" (batch from sample {first_sample})" if first_sample else ""
            )
            return
        exact = is_exact_dtype(research) or is_exact_dtype(serve)
        text = serve.dtype.kind in "USO" or research.dtype.kind in "USO"
        if text:
            abs_err = np.where(serve != research, np.inf, 0.0)
            research = np.zeros(research.shape)  # magnitudes for the maths below; strings have none
        else:
            abs_err = absolute_error(serve, research, self.tolerance.equal_nan)
        self.exact = self.exact or exact
        flat_abs = abs_err.reshape(-1)
        if flat_abs.size == 0:
            return
        worst = int(np.argmax(flat_abs))
        finite = bool(np.isfinite(flat_abs[worst]))  # pragma: no mutate (a shortcut: inf marks every NaN/inf mismatch)
        magnitude = magnitude_of(research).reshape(-1)
        tol = self.tolerance

        if self.worst is None or flat_abs[worst] > self.max_abs:
            index = [int(i) for i in np.unravel_index(worst, abs_err.shape)]
            if index:
                index[0] += first_sample
            self.max_abs = float(flat_abs[worst])
            # A string is reported as no number on either side (not the zeros that stand in for it).
            self.worst = (
                index,
                None if text else _as_float(serve.reshape(-1)[worst]),
                None if text else _as_float(research.reshape(-1)[worst]),
            )
        if not finite:
            self.nonfinite += int(np.isinf(flat_abs).sum())

        bad = None  # pragma: no mutate (read only when a violation set it)
        if exact:
            bad = flat_abs != 0
            batch_violations = int(np.count_nonzero(bad))
            if batch_violations:
                self.max_ratio = math.inf
                self.required = math.inf
        else:
            allowed = np.multiply(magnitude, tol.rtol)
            allowed += tol.atol
            with np.errstate(divide="ignore", invalid="ignore"):  # pragma: no mutate (warnings only)
                ratios = np.divide(flat_abs, allowed)
            if tol.atol == 0:
                ratios[flat_abs == 0] = 0.0  # 0/0 where research is 0: an exact match
            batch_ratio = float(np.max(ratios))
            self.max_ratio = max(self.max_ratio, batch_ratio)
            batch_violations = 0
            # abs > allowed implies abs/allowed >= 1 after rounding, so a ratio under 1 proves
            # there is no violation without building the mask (the common, passing case).
            # (Division is correctly rounded, so abs > allowed even gives a ratio strictly above 1:
            # `<=` here would be the same test, which mutation testing need not tell apart.)
            if not batch_ratio < 1.0:  # pragma: no mutate
                bad = flat_abs > allowed
                batch_violations = int(np.count_nonzero(bad))
            if batch_violations:
                # Only violating elements can set the smallest passing atol (the rest are <= atol).
                excess = float(np.max(flat_abs[bad] - (allowed[bad] - tol.atol)))
                self.required = excess if self.required is None else max(self.required, excess)
        self.violations += batch_violations

        rel = relative_to(flat_abs, magnitude, out=magnitude)  # pragma: no mutate (reuses the buffer)
        if self.histograms is not None:
            self.histograms[0].add(flat_abs)
            self.histograms[1].add(rel)
        self.sum_abs += float(np.sum(flat_abs))
        self.sum_rel += float(np.sum(rel))
        self.max_rel = max(self.max_rel, float(np.max(rel)))
        self.elements += flat_abs.size
        self.rows += abs_err.shape[0] if abs_err.ndim else 1
        if self.median is not None:
            self.median.add(flat_abs)
        self._keep_top("abs", self.top_abs, flat_abs)
        self._keep_top("rel", self.top_rel, rel)

        if batch_violations and abs_err.ndim:
            rows = abs_err.shape[0]
            assert bad is not None, "a batch with violations marked them"
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
            self.per_position = self.per_position or decision.per_position
            room = MAX_LISTED_SAMPLES - len(self.disagreeing)
            self.disagreeing += [i + first_sample for i in decision.disagreeing_samples[:room]]

    def merge(self, other: OutputAccumulator) -> None:
        """Take in ``other``'s comparison: the samples after this one's, judged by a worker elsewhere.

        Both accumulators must judge the same output under the same rules and the same declared
        ``total_elements`` (the whole set's), and ``other`` must have numbered its samples in the
        whole set (``first_sample``). Then the merge is exact, and equal to one accumulator fed every
        batch in order: counts, sums, maxima and violations add up or take the larger; the worst
        element and the listed samples keep the first ones seen, as one pass would; and p99 stays
        exact because each side kept at least the largest ``total - p99 position`` values of the
        *whole* set's count, so the largest of their union are the whole set's largest (the
        mergeable method the distributed checks rely on; memory per side: 1% of the whole set).
        """
        if (other.name, other.total, other.tolerance, other.histograms is None, other.budget) != (
            self.name,
            self.total,
            self.tolerance,
            self.histograms is None,
            self.budget,
        ):
            raise ValueError(
                f"cannot merge {other.name!r} judged over {other.total} elements into {self.name!r} "
                f"over {self.total}: shards must be judged as parts of one set, by the same rules"
            )
        if self.problem is None and other.problem is not None:
            self.problem = other.problem
        if other.worst is not None and (self.worst is None or other.max_abs > self.max_abs):
            self.worst, self.max_abs = other.worst, other.max_abs
        self.elements += other.elements
        self.rows += other.rows
        if self.median is not None and other.median is not None:  # both have one, or neither (same budget)
            self.median.counts += other.median.counts
            self.median.zero += other.median.zero
        self.violations += other.violations
        self.nonfinite += other.nonfinite
        self.sum_abs += other.sum_abs
        self.sum_rel += other.sum_rel
        self.max_rel = max(self.max_rel, other.max_rel)
        self.max_ratio = max(self.max_ratio, other.max_ratio)
        if other.required is not None:
            self.required = other.required if self.required is None else max(self.required, other.required)
        for which, mine, theirs in (("abs", self.top_abs, other.top_abs), ("rel", self.top_rel, other.top_rel)):
            for values in theirs:
                self._keep_top(which, mine, values)
        self.failing_count += other.failing_count
        self.failing = sorted(self.failing + other.failing, key=lambda c: -c[0])[:MAX_LISTED_SAMPLES]
        self.samples += other.samples
        self.agreeing += other.agreeing
        self.ties += other.ties
        self.per_position = self.per_position or other.per_position
        self.disagreeing += other.disagreeing[: MAX_LISTED_SAMPLES - len(self.disagreeing)]
        # Read by finish() only once a decision was counted, which exact outputs never count: for an output
        # of one dtype in every shard either value gives the same verdict (kept for a set that mixes them).
        self.exact = self.exact or other.exact  # pragma: no mutate
        if self.histograms is not None:  # both have them, or neither (checked above)
            for mine_h, theirs_h in zip(self.histograms, other.histograms, strict=True):  # type: ignore[arg-type]
                mine_h.counts += theirs_h.counts
                mine_h.zero += theirs_h.zero

    def listed_samples(self) -> set[int]:
        """Every sample this comparison will name (failing, disagreeing, the worst one)."""
        listed = {i for _, i in self.failing} | set(self.disagreeing)
        if self.worst is not None and self.worst[0]:
            listed.add(self.worst[0][0])
        return listed

    def _p99(self, buffers: list[np.ndarray], n: int) -> float:
        kept = buffers[0] if len(buffers) == 1 else np.concatenate(buffers)  # pragma: no mutate (saves a copy)
        return percentile99(kept) if self._keep_all else p99_from_top(kept, n)

    def finish(self) -> OutputComparison:
        if self.problem is not None:
            return OutputComparison(
                name=self.name, passed=False, tolerance=self.tolerance, stats=None, problem=self.problem
            )
        n = self.elements
        if n == 0:
            stats = ErrorStats(
                elements=0,
                max_abs=0,
                mean_abs=0,
                p99_abs=0,
                max_rel=0,
                mean_rel=0,
                p99_rel=0,
                violations=0,
                nonfinite_mismatches=0,
                worst_sample=None,
                worst_index=None,
                worst_serve=None,
                worst_research=None,
                required_atol=0,
                max_tolerance_ratio=0,
            )
        else:
            # p99 is taken over the `n` elements seen: a total declared larger only kept more than needed.
            index, worst_serve, worst_research = self.worst or (None, None, None)
            stats = ErrorStats(
                elements=n,
                max_abs=self.max_abs,
                mean_abs=self.sum_abs / n,
                p99_abs=self._p99(self.top_abs, n),
                max_rel=self.max_rel,
                mean_rel=self.sum_rel / n,
                p99_rel=self._p99(self.top_rel, n),
                violations=self.violations,
                nonfinite_mismatches=self.nonfinite,
                worst_sample=index[0] if index else None,
                worst_index=index or None,
                worst_serve=worst_serve,
                worst_research=worst_research,
                # An infinite error makes the excess infinite too: no atol would pass.
                required_atol=self.required,
                max_tolerance_ratio=self.max_ratio,
            )
        decision = None
        if self.scores and not self.exact and self.samples:
            decision = DecisionStats(
                samples=self.samples,
                agreeing=self.agreeing,
                ties=self.ties,
                agreement=self.agreeing / self.samples,
                min_agreement=self.min_decision_agreement,
                disagreeing_samples=self.disagreeing,
                max_tie_share=self.max_tie_share,
                per_position=self.per_position,
            )
        if self.decide_labels and self.exact and n:
            # A label output of a graph that approximates research: the share of equal labels decides.
            decision = DecisionStats(
                samples=n,
                agreeing=n - stats.violations,
                ties=0,
                agreement=(n - stats.violations) / n,
                min_agreement=self.min_decision_agreement,
                disagreeing_samples=[i for _, i in self.failing],
                per_position=n != self.rows,
                labels=True,
            )
        budget = self._budget_stats(n)
        if decision is not None and decision.labels:
            passed = decision.passed
        else:
            passed = (
                stats.violations == 0
                and (decision is None or decision.passed)
                and (budget is None or not budget.over(stats))
            )
        above = False
        if self.baseline_max_abs is not None and self.baseline_factor is not None:
            # A floor of a few float32 ulps at 1.0 keeps a zero baseline from flagging noise.
            above = stats.max_abs > self.baseline_factor * max(self.baseline_max_abs, 1e-6)
        return OutputComparison(
            name=self.name,
            passed=passed,
            tolerance=self.tolerance,
            stats=stats,
            decision=decision,
            failing_samples=[i for _, i in self.failing],
            failing_sample_count=self.failing_count,
            baseline_max_abs=self.baseline_max_abs,
            above_baseline=above,
            histogram=self._histogram(),
            budget=budget,
        )

    def _budget_stats(self, n: int) -> BudgetStats | None:
        if self.budget is None or self.median is None:
            return None
        if n == 0:
            return BudgetStats(budget=self.budget, p50_abs=0.0)
        if self._keep_all:
            kept = np.concatenate(self.top_abs)
            # The higher middle value, as the histogram's bound takes (and no inf - inf interpolation).
            return BudgetStats(budget=self.budget, p50_abs=float(np.percentile(kept, 50, method="higher")))
        return BudgetStats(budget=self.budget, p50_abs=self.median.median_bound(), p50_is_bound=True)

    def _histogram(self) -> ErrorHistogram | None:
        if self.histograms is None:
            return None
        absolute, relative = self.histograms
        edges = [HISTOGRAM_LOW + k * HISTOGRAM_STEP for k in range(LogHistogram.bins + 1)]
        return ErrorHistogram(
            log10_edges=edges,
            abs_counts=absolute.counts.tolist(),
            abs_zero=absolute.zero,
            rel_counts=relative.counts.tolist(),
            rel_zero=relative.zero,
        )


def _as_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


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
        name,
        tolerance,
        research.size,
        scores=scores,
        min_decision_agreement=min_decision_agreement,
        baseline_max_abs=baseline_max_abs,
        baseline_factor=baseline_factor,
        tie_tolerance=tie_tolerance,
    )
    accumulator.add(serve, research)
    return accumulator.finish()
