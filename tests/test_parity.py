"""The comparison rules, one test each (see the parity module docstring)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from paritybundle.bundle.manifest import Tolerance
from paritybundle.parity.accumulator import compare_output
from paritybundle.parity.decision import decision_agreement
from paritybundle.parity.elementwise import absolute_error, relative_error

TIGHT = Tolerance(atol=1e-4, rtol=1e-3)


def test_identical_arrays_pass_and_result_is_truthy():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    result = compare_output("y", x, x.copy(), TIGHT)
    assert result and result.passed
    assert result.stats.max_abs == 0 and result.stats.violations == 0


def test_error_just_inside_and_just_outside_the_bound():
    research = np.array([[1.0, 2.0]])
    bound = TIGHT.atol + TIGHT.rtol * 2.0
    assert compare_output("y", research + [[0, bound * 0.99]], research, TIGHT)
    failed = compare_output("y", research + [[0, bound * 1.01]], research, TIGHT)
    assert not failed
    assert failed.stats.violations == 1 and failed.stats.worst_index == [0, 1]
    assert failed.failing_samples == [0]


def test_upcast_adds_no_error_for_float32():
    a = np.array([1.0000001], dtype=np.float32)
    b = np.array([1.0], dtype=np.float32)
    assert absolute_error(a, b)[0] == pytest.approx(float(a[0]) - 1.0, abs=0)


def test_nan_matches_nan_only_when_policy_allows():
    research = np.array([np.nan, 1.0])
    assert compare_output("y", research.copy(), research, TIGHT)
    strict = Tolerance(atol=1e-4, rtol=1e-3, equal_nan=False)
    assert not compare_output("y", research.copy(), research, strict)


def test_nan_never_matches_a_number():
    result = compare_output("y", np.array([np.nan]), np.array([1.0]), TIGHT)
    assert not result and result.stats.nonfinite_mismatches == 1
    assert math.isinf(result.stats.required_atol)


def test_inf_matches_only_the_same_inf():
    assert compare_output("y", np.array([np.inf]), np.array([np.inf]), TIGHT)
    assert not compare_output("y", np.array([-np.inf]), np.array([np.inf]), TIGHT)
    assert not compare_output("y", np.array([1e38]), np.array([np.inf]), TIGHT)


def test_relative_error_of_zero_research_uses_epsilon():
    rel = relative_error(np.array([1e-6]), np.array([0.0]))
    assert np.isfinite(rel).all() and rel[0] == pytest.approx(1e6)


def test_integer_outputs_must_match_exactly():
    loose = Tolerance(atol=10, rtol=10)
    assert not compare_output("label", np.array([1, 2]), np.array([1, 3]), loose)
    assert compare_output("label", np.array([1, 2]), np.array([1, 2]), loose)


def test_shape_mismatch_fails_with_a_reason():
    result = compare_output("y", np.zeros((2, 3)), np.zeros((2, 4)), TIGHT)
    assert not result and "shape [2, 3]" in result.problem


def test_required_atol_is_the_smallest_passing_atol():
    research = np.array([0.0, 10.0])
    serve = research + [0.5, 0.02]
    result = compare_output("y", serve, research, TIGHT)
    assert result.stats.required_atol == pytest.approx(0.5)
    assert compare_output("y", serve, research, Tolerance(atol=result.stats.required_atol * 1.0001, rtol=TIGHT.rtol))


def test_decision_disagreement_fails_even_inside_a_loose_elementwise_tolerance():
    research = np.array([[0.0, 1.0], [2.0, 0.0]])
    serve = np.array([[1.0, 0.0], [2.0, 0.0]])
    result = compare_output("p", serve, research, Tolerance(atol=2, rtol=0), scores=True, tie_tolerance=TIGHT)
    assert result.stats.violations == 0
    assert not result and result.decision.agreement == 0.5 and result.decision.disagreeing_samples == [0]


def test_flip_within_the_tolerance_in_force_is_a_tie_without_a_separate_tie_tolerance():
    result = compare_output("p", np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), Tolerance(atol=2, rtol=0), scores=True)
    assert result and result.decision.ties == 1


def test_near_tie_flip_is_a_tie_not_a_disagreement():
    research = np.array([[1.0, 1.0 + 1e-6]])
    serve = np.array([[1.0 + 1e-6, 1.0]])
    stats = decision_agreement(serve, research, TIGHT, 1.0)
    assert stats.passed and stats.ties == 1 and stats.agreement == 1.0


def test_baseline_far_exceeded_is_flagged_but_passes():
    research = np.ones(4)
    result = compare_output("y", research + 5e-4, research, TIGHT, baseline_max_abs=1e-7, baseline_factor=100)
    assert result.passed and result.above_baseline


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=st.floats(-1e6, 1e6, width=32)
    )
)
def test_any_finite_array_matches_itself_and_a_shifted_copy_fails(array):
    assert compare_output("y", array.copy(), array, TIGHT)
    shifted = array.astype(np.float64) + 1.0 + 2e-3 * np.abs(array.astype(np.float64))
    assert not compare_output("y", shifted, array, TIGHT)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 500), elements=st.floats(0, 1e3)))
def test_percentile99_equals_numpy_percentile(values):
    from paritybundle.parity.elementwise import percentile99

    assert percentile99(values) == pytest.approx(float(np.percentile(values, 99)), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("kind", ["normal", "constant", "heavy_tail", "with_inf", "top_heavy"])
def test_percentile99_is_exact_on_large_arrays(kind):
    from paritybundle.parity.elementwise import percentile99

    rng = np.random.default_rng(3)
    values = {
        "normal": np.abs(rng.normal(size=100_003)),
        "constant": np.full(50_000, 2.5),
        "heavy_tail": rng.pareto(0.5, size=60_000),
        "with_inf": np.concatenate([rng.random(20_000), np.full(500, np.inf)]),
        # Many large values in the sample's blind spots: forces the full-partition fallback.
        "top_heavy": np.where(np.arange(40_000) % 16 == 0, 0.0, rng.random(40_000)),
    }[kind]
    expected = float(np.percentile(values, 99))
    if np.isnan(expected):  # numpy interpolates inf - inf to NaN; both neighbours are inf here
        expected = float(np.percentile(values, 99, method="lower"))
    assert percentile99(values) == (pytest.approx(expected, rel=1e-12) if np.isfinite(expected) else expected)
