"""What a comparison returns: per-output statistics and verdicts, truthy when parity holds.

These models are part of every report's JSON (``--json``), so their fields are stable.
"""

from __future__ import annotations

from ..bundle.manifest import ErrorBudget, Tolerance
from ..bundle.strict import StrictModel

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
    """Argmax agreement over samples (or positions, for rank > 2) for an output of class scores."""

    samples: int
    agreeing: int
    ties: int
    agreement: float
    min_agreement: float
    disagreeing_samples: list[int]
    # The largest share of samples the near-tie rule may decide (1.0: no bound, as before it existed).
    max_tie_share: float = 1.0
    # True for outputs of rank > 2: one decision per position (token, pixel), and ``samples``,
    # ``agreeing`` and ``ties`` count positions; ``disagreeing_samples`` still lists batch rows.
    per_position: bool = False
    # True for an integer, bool or string output of a serving graph that approximates research by design:
    # the decisions are its elements, agreeing when equal to research's.
    labels: bool = False

    @property
    def unit(self) -> str:
        return "positions" if self.per_position else "samples"

    @property
    def tie_share(self) -> float:
        return self.ties / self.samples if self.samples else 0.0

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement and self.tie_share <= self.max_tie_share


class BudgetStats(StrictModel):
    """An output judged by a declared error budget (a serving graph that approximates research by design):
    the median absolute error beside the budget (the p99 and the maximum are ``ErrorStats``'s)."""

    budget: ErrorBudget
    p50_abs: float
    # True when ``p50_abs`` is an upper bound (the upper edge of its log10 bin), not the exact median: past
    # the elements an accumulator keeps every error of (parity/accumulator.py).
    p50_is_bound: bool = False

    def over(self, stats: ErrorStats) -> list[str]:
        """``p50 0.031 > 0.02``-style statements of each quantile over its budget (empty: within it)."""
        measured = (
            ("p50", self.p50_abs, self.budget.p50),
            ("p99", stats.p99_abs, self.budget.p99),
            ("max", stats.max_abs, self.budget.max),
        )
        return [f"{which} {value:.3g} > {limit:.3g}" for which, value, limit in measured if value > limit]


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
    # For a reference set of several groups of shapes: the group of the worst element, and its sample
    # within that group (``stats.worst_sample`` numbers samples across the whole set).
    worst_group: int | None = None
    worst_group_sample: int | None = None
    # Set when the output is judged by a declared error budget instead of its tolerance.
    budget: BudgetStats | None = None

    def __bool__(self) -> bool:
        return self.passed
