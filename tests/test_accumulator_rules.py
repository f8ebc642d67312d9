"""The accumulator's bookkeeping, rule by rule, so that a wrong sign or a dropped field fails a test.

These were written against the mutants ``make mutation`` found surviving in
``parity/accumulator.py`` (docs/mutation.md): the streaming p99 past two million elements,
the histogram, the empty output, decisions added up over batches, the baseline flag.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from paritybundle.bundle.manifest import Tolerance
from paritybundle.parity import accumulator as accumulator_module
from paritybundle.parity.accumulator import HISTOGRAM_LOW, HISTOGRAM_STEP, OutputAccumulator, compare_output
from paritybundle.parity.results import MAX_LISTED_SAMPLES

TIGHT = Tolerance(atol=1e-3, rtol=0.0)


def _errors_of(result):
    return result.stats


# --- the streaming p99: past KEEP_ALL_ELEMENTS only the largest 1% is kept -------------------------


def _stream(serve, research, batch_rows, total=None):
    accumulator = OutputAccumulator("y", Tolerance(atol=10.0, rtol=0.0), research.size if total is None else total)
    for start in range(0, len(research), batch_rows):
        accumulator.add(serve[start : start + batch_rows], research[start : start + batch_rows], start)
    return accumulator.finish()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_streaming_p99_is_numpys_percentile_exactly(monkeypatch, seed):
    rng = np.random.default_rng(seed)
    research = rng.normal(size=(4000, 50)) * rng.uniform(0.1, 10, size=(4000, 1))
    serve = research + rng.standard_t(2, size=research.shape) * 1e-3
    kept_all = _stream(serve, research, 100)
    monkeypatch.setattr(accumulator_module, "KEEP_ALL_ELEMENTS", 0)  # stream even 200,000 elements
    streamed = _stream(serve, research, 100)
    errors = np.abs(serve - research)
    assert streamed.stats.p99_abs == pytest.approx(float(np.percentile(errors, 99)), rel=1e-12, abs=0)
    relative = errors / np.maximum(np.abs(research), 1e-12)
    assert streamed.stats.p99_rel == pytest.approx(float(np.percentile(relative, 99)), rel=1e-12, abs=0)
    assert streamed.stats == kept_all.stats


def test_the_streaming_p99_holds_when_later_batches_are_the_smallest(monkeypatch):
    # Errors shrink batch by batch: once the floor is set, later values fall below it and are dropped.
    monkeypatch.setattr(accumulator_module, "KEEP_ALL_ELEMENTS", 0)
    errors = np.linspace(1.0, 0.0, 100_000).reshape(1000, 100)
    streamed = _stream(errors, np.zeros_like(errors), 50)
    assert streamed.stats.p99_abs == pytest.approx(float(np.percentile(errors, 99)), rel=1e-12)
    rising = errors[::-1].copy()
    streamed = _stream(rising, np.zeros_like(rising), 50)
    assert streamed.stats.p99_abs == pytest.approx(float(np.percentile(rising, 99)), rel=1e-12)


def test_fewer_elements_than_declared_still_give_the_exact_p99(monkeypatch):
    monkeypatch.setattr(accumulator_module, "KEEP_ALL_ELEMENTS", 0)
    rng = np.random.default_rng(5)
    research = rng.normal(size=(500, 40))
    serve = research + rng.normal(size=research.shape) * 1e-4
    streamed = _stream(serve, research, 100, total=research.size * 3)
    assert streamed.stats.elements == research.size
    assert streamed.stats.p99_abs == pytest.approx(float(np.percentile(np.abs(serve - research), 99)), rel=1e-12)


# --- the histogram ------------------------------------------------------------------------------


def test_the_histogram_counts_each_error_in_its_log10_bin():
    research = np.full(6, 4.0)
    serve = research + np.array([0.0, 2e-6, 2e-3, 2e-3, 1e5, 0.0])
    serve[5] = np.nan  # a non-finite mismatch: infinite error, counted in the last bin
    accumulator = OutputAccumulator("y", TIGHT, 6, histogram=True)
    accumulator.add(serve, research)
    histogram = accumulator.finish().histogram
    bins = int((4.0 - HISTOGRAM_LOW) / HISTOGRAM_STEP)
    assert histogram.log10_edges == [HISTOGRAM_LOW + k * HISTOGRAM_STEP for k in range(bins + 1)]
    assert (histogram.log10_edges[0], histogram.log10_edges[-1], len(histogram.abs_counts)) == (-12.0, 4.0, bins)

    def expected(values):
        counts = [0] * bins
        for value in values:
            counts[min(int((math.log10(value) - HISTOGRAM_LOW) / HISTOGRAM_STEP), bins - 1)] += 1
        return counts

    absolute = [2e-6, 2e-3, 2e-3, 1e5]
    assert histogram.abs_zero == 1 and histogram.rel_zero == 1
    assert histogram.abs_counts[:-1] == expected(absolute)[:-1]
    assert histogram.abs_counts[-1] == 2  # 1e5 is clipped into the last bin, with the inf
    relative = [value / 4.0 for value in absolute]
    assert histogram.rel_counts[:-1] == expected(relative)[:-1]
    assert histogram.rel_counts[-1] == 2
    assert histogram.abs_counts != histogram.rel_counts


def test_histogram_counts_are_whole_numbers_added_over_batches_and_clipped_at_both_ends():
    accumulator = OutputAccumulator("y", TIGHT, 6, histogram=True)
    accumulator.add(np.array([1e-15, 1.2e-12, 0.0]), np.zeros(3))  # below the first edge, in the first bin
    accumulator.add(np.array([1.2e-12, 0.0, 3e-8]), np.zeros(3), 3)  # the second batch misses the last bin
    histogram = accumulator.finish().histogram
    assert histogram.abs_zero == 2 and sum(histogram.abs_counts) == 4
    assert histogram.abs_counts[0] == 3 and histogram.abs_counts[-1] == 0
    assert all(type(count) is int for count in histogram.abs_counts + histogram.rel_counts)


def test_streaming_keeps_about_the_largest_one_percent_not_everything(monkeypatch):
    monkeypatch.setattr(accumulator_module, "KEEP_ALL_ELEMENTS", 0)
    rng = np.random.default_rng(9)
    research = rng.normal(size=(4000, 50))
    accumulator = OutputAccumulator("y", Tolerance(atol=10.0, rtol=0.0), research.size)
    batch = 100
    for start in range(0, len(research), batch):
        rows = research[start : start + batch]
        accumulator.add(rows + rng.normal(size=rows.shape) * 1e-3, rows, start)
    top_one_percent = research.size // 100 + 1
    retained = sum(b.size for b in accumulator.top_abs)
    # Buffers merge down to the top 1% once they pass 4x it plus 4096: never more than that and a batch.
    assert top_one_percent <= retained <= 4 * top_one_percent + 4096 + batch * 50


def test_no_histogram_unless_asked():
    assert compare_output("y", np.ones(3), np.ones(3), TIGHT).histogram is None
    accumulator = OutputAccumulator("y", TIGHT, 4)
    accumulator.add(np.ones((2, 2)), np.ones((2, 2)))
    result = accumulator.finish()
    assert result.histogram is None and result.decision is None  # nor a decision, unless scores


# --- empty, zero-dimensional, exact and text outputs ---------------------------------------------


def test_an_empty_output_passes_with_all_statistics_zero():
    result = compare_output("y", np.zeros((0, 3)), np.zeros((0, 3)), TIGHT, scores=True)
    assert result.passed and result.decision is None
    assert result.stats.model_dump() == {
        "elements": 0,
        "max_abs": 0,
        "mean_abs": 0,
        "p99_abs": 0,
        "max_rel": 0,
        "mean_rel": 0,
        "p99_rel": 0,
        "violations": 0,
        "nonfinite_mismatches": 0,
        "worst_sample": None,
        "worst_index": None,
        "worst_serve": None,
        "worst_research": None,
        "required_atol": 0,
        "max_tolerance_ratio": 0,
    }


def test_a_zero_dimensional_output_has_no_worst_sample():
    result = compare_output("y", np.float32(1.0), np.float32(1.5), TIGHT)
    assert not result.passed
    assert (result.stats.worst_sample, result.stats.worst_index) == (None, None)
    assert (result.stats.worst_serve, result.stats.worst_research) == (1.0, 1.5)


def test_identical_outputs_still_name_where_the_largest_error_is():
    result = compare_output("y", np.ones((2, 3)), np.ones((2, 3)), TIGHT)
    assert result.passed
    assert (result.stats.worst_sample, result.stats.worst_index) == (0, [0, 0])
    assert result.stats.required_atol is None and result.stats.max_tolerance_ratio == 0


@pytest.mark.parametrize(
    "serve, research",
    [
        (np.array([1.0000001, 2.0]), np.array([1, 2])),  # float serving an integer output
        (np.array([1, 2]), np.array([1.0000001, 2.0])),  # and the other way round
    ],
)
def test_an_integer_on_either_side_makes_the_comparison_exact(serve, research):
    result = compare_output("y", serve, research, Tolerance(atol=1.0, rtol=0.0))
    assert result.stats.violations == 1
    assert result.stats.required_atol == math.inf and result.stats.max_tolerance_ratio == math.inf


def test_exact_outputs_are_never_judged_as_scores():
    result = compare_output("y", np.array([[0, 1], [1, 0]]), np.array([[0, 1], [1, 0]]), TIGHT, scores=True)
    assert result.passed and result.decision is None
    accumulator = OutputAccumulator("y", TIGHT, 4, scores=True)
    accumulator.add(np.array([[0.0, 1.0]]), np.array([[0.0, 1.0]]))
    accumulator.add(np.array([[0, 1]]), np.array([[0, 1]]), 1)
    assert accumulator.finish().decision is None  # one exact batch makes the whole output exact


@pytest.mark.parametrize(
    "serve, research",
    [
        (np.array(["1", "2"]), np.array(["1", "3"])),
        (np.array(["1", "2"]), np.array([1.0, 3.0])),  # text on one side only
        (np.array([1.0, 2.0]), np.array(["1", "3"])),
    ],
)
def test_text_on_either_side_is_compared_exactly_and_reports_no_numbers(serve, research):
    result = compare_output("y", serve, research, TIGHT)
    assert not result.passed and result.stats.violations >= 1
    assert (result.stats.worst_serve, result.stats.worst_research) == (None, None)


# --- tolerance ratios and the atol that would pass -------------------------------------------------


def test_a_zero_research_value_matched_exactly_takes_no_share_of_a_relative_only_tolerance():
    result = compare_output("y", np.array([0.0, 1.05]), np.array([0.0, 1.0]), Tolerance(atol=0.0, rtol=0.1))
    assert result.passed
    assert result.stats.max_tolerance_ratio == pytest.approx(0.5)


def test_a_non_finite_mismatch_needs_an_infinite_atol_and_a_finite_one_its_excess():
    nan = compare_output("y", np.array([np.nan, 1.0]), np.array([1.0, 1.0]), TIGHT)
    assert nan.stats.required_atol == math.inf and nan.stats.nonfinite_mismatches == 1
    finite = compare_output("y", np.array([1.5, 1.0]), np.array([1.0, 1.0]), Tolerance(atol=1e-3, rtol=0.1))
    assert finite.stats.required_atol == pytest.approx(0.5 - 0.1)


# --- decisions over several batches ----------------------------------------------------------------


def _scores_batch(rows, flip_rows=(), tie_rows=()):
    research = np.tile(np.array([0.0, 1.0, 5.0]), (rows, 1))
    serve = research.copy()
    for row in flip_rows:
        serve[row] = [0.0, 9.0, 5.0]  # a clear flip: research's margin is 4
    for row in tie_rows:
        research[row] = [0.0, 5.0, 5.0 + 1e-4]
        serve[row] = [0.0, 5.0 + 1e-4, 5.0]
    return serve, research


def test_decisions_add_up_over_batches_with_samples_numbered_globally():
    accumulator = OutputAccumulator(
        "y",
        Tolerance(atol=10.0, rtol=0.0),
        60,
        scores=True,
        tie_tolerance=Tolerance(atol=1e-3, rtol=0.0),
        min_decision_agreement=0.5,
    )
    first = _scores_batch(10, flip_rows=[2], tie_rows=[4])
    second = _scores_batch(10, flip_rows=[1, 3], tie_rows=[5, 6])
    accumulator.add(*first, 0)
    accumulator.add(*second, 10)
    decision = accumulator.finish().decision
    assert (decision.samples, decision.agreeing, decision.ties) == (20, 17, 3)
    assert decision.disagreeing_samples == [2, 11, 13]
    assert decision.min_agreement == 0.5 and decision.max_tie_share == 1.0 and not decision.per_position


def test_disagreeing_samples_are_listed_up_to_the_limit_across_batches():
    accumulator = OutputAccumulator("y", Tolerance(atol=10.0, rtol=0.0), 10**6, scores=True, tie_tolerance=TIGHT)
    rows = MAX_LISTED_SAMPLES
    for batch in range(3):
        accumulator.add(*_scores_batch(rows, flip_rows=range(rows)), batch * rows)
    decision = accumulator.finish().decision
    assert decision.disagreeing_samples == list(range(MAX_LISTED_SAMPLES))
    assert decision.samples == 3 * rows and decision.agreeing == 0


def test_per_position_decisions_stay_per_position_over_batches():
    accumulator = OutputAccumulator("y", TIGHT, 10**6, scores=True, max_tie_share=0.25)
    research = np.zeros((2, 3, 4))
    research[..., 1] = 1.0
    accumulator.add(research.copy(), research, 0)
    accumulator.add(research[:, :2].copy(), research[:, :2], 2)
    decision = accumulator.finish().decision
    assert decision.per_position and decision.samples == 6 + 4 and decision.max_tie_share == 0.25


def test_a_one_dimensional_score_vector_is_one_decision_per_row():
    result = compare_output("y", np.array([0.1, 0.9]), np.array([0.1, 0.9]), TIGHT, scores=True)
    assert result.decision is not None and result.decision.samples == 2


def test_compare_output_checks_decisions_only_for_scores_and_with_the_given_share():
    research = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert compare_output("y", research, research, TIGHT).decision is None
    decision = compare_output("y", research, research, TIGHT, scores=True, min_decision_agreement=0.75).decision
    assert decision.min_agreement == 0.75


# --- the baseline notice ----------------------------------------------------------------------------


def test_above_the_baseline_means_strictly_more_than_factor_times_it():
    research = np.array([1.0, 2.0])
    at_bound = compare_output(
        "y", research + [0.5, 0], research, Tolerance(atol=1.0, rtol=0.0), baseline_max_abs=0.05, baseline_factor=10.0
    )
    assert at_bound.stats.max_abs == 0.5 and not at_bound.above_baseline
    above = compare_output(
        "y",
        research + [0.5000001, 0],
        research,
        Tolerance(atol=1.0, rtol=0.0),
        baseline_max_abs=0.05,
        baseline_factor=10.0,
    )
    assert above.above_baseline
    assert not compare_output("y", research + [0.9, 0], research, Tolerance(atol=1.0, rtol=0.0)).above_baseline
    # A zero baseline is floored at 1e-6, so float noise is not flagged.
    assert not compare_output(
        "y", research + [5e-6, 0], research, Tolerance(atol=1.0, rtol=0.0), baseline_max_abs=0.0, baseline_factor=10.0
    ).above_baseline


# --- the element-wise helpers -----------------------------------------------------------------------


def test_integers_that_float64_cannot_tell_apart_still_differ():
    from paritybundle.parity.elementwise import absolute_error

    big = 2**53
    assert absolute_error(np.array([big + 1, 5]), np.array([big, 5])).tolist() == [1.0, 0.0]
    result = compare_output("ids", np.array([big + 1, 7]), np.array([big, 7]), TIGHT)
    assert not result.passed and result.stats.violations == 1


def test_an_integer_against_a_float_is_their_plain_difference_and_nan_still_an_infinite_error():
    from paritybundle.parity.elementwise import absolute_error

    assert absolute_error(np.array([1, 2]), np.array([1.5, np.nan])).tolist() == [0.5, math.inf]
    assert absolute_error(np.array([1.5, np.nan]), np.array([1, 2])).tolist() == [0.5, math.inf]


def test_nan_matches_nan_by_default_and_only_when_allowed():
    from paritybundle.parity.elementwise import absolute_error

    serve, research = np.array([np.nan, np.inf, -np.inf, 1.0]), np.array([np.nan, np.inf, np.inf, 1.0])
    assert absolute_error(serve, research).tolist() == [0.0, 0.0, math.inf, 0.0]
    assert absolute_error(serve, research, equal_nan=False).tolist() == [math.inf, 0.0, math.inf, 0.0]


def test_magnitudes_are_float64_with_non_finite_research_counted_as_zero():
    from paritybundle.parity.elementwise import magnitude_of

    magnitude = magnitude_of(np.array([np.inf, np.nan, -2.5, 3.0], np.float32))
    assert magnitude.dtype == np.float64 and magnitude.tolist() == [0.0, 0.0, 2.5, 3.0]
    assert magnitude_of(np.array([-3, 4], np.int32)).tolist() == [3.0, 4.0]


@pytest.mark.parametrize("k", [0, 1, 7, 100, 5000])
def test_largest_picks_the_k_largest_of_any_shape(k):
    from paritybundle.parity.elementwise import largest

    values = np.random.default_rng(k).normal(size=(100, 60))
    picked = largest(values, k)
    assert picked.ndim == 1 and picked.size == min(k, values.size)
    assert sorted(picked.tolist()) == (sorted(values.reshape(-1).tolist())[values.size - k :] if k else [])


def test_percentile99_is_numpys_linear_interpolation():
    from paritybundle.parity.elementwise import p99_from_top, percentile99

    rng = np.random.default_rng(3)
    for size in (1, 2, 100, 101, 12345):
        values = rng.exponential(size=size)
        assert percentile99(values) == pytest.approx(float(np.percentile(values, 99)), rel=1e-12, abs=0)
    values = rng.normal(size=1000)
    # Given more than the top 1% (a streaming buffer), the order statistic is still the right one.
    assert p99_from_top(np.sort(values)[-200:], 1000) == pytest.approx(float(np.percentile(values, 99)), rel=1e-12)


def test_float32_outputs_are_subtracted_in_float64_so_the_error_does_not_overflow():
    result = compare_output(
        "y", np.array([3e38], np.float32), np.array([-3e38], np.float32), Tolerance(atol=1e39, rtol=0.0)
    )
    assert result.passed and result.stats.nonfinite_mismatches == 0
    assert result.stats.max_abs == pytest.approx(6e38, rel=1e-6)
