"""The merge of judges from shards (parity.accumulator.OutputAccumulator.merge): equal to one pass.

A check split over workers (tests/test_cluster_checks.py) is only as good as this rule; hypothesis
draws sets, cuts and noise, in both regimes of the p99 buffer (every error kept, or the top 1%).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paritybundle.bundle.manifest import Tolerance
from paritybundle.parity import accumulator as accumulator_module
from paritybundle.parity.accumulator import OutputAccumulator

STAT_FIELDS = (
    "elements",
    "max_abs",
    "p99_abs",
    "max_rel",
    "p99_rel",
    "violations",
    "nonfinite_mismatches",
    "worst_sample",
    "worst_index",
    "worst_serve",
    "worst_research",
    "required_atol",
    "max_tolerance_ratio",
)


def assert_same_comparison(merged, whole, mean_rel: float = 1e-12) -> None:
    """Equal in everything but the means, whose float sums may round differently in another order
    (and, where ONNX Runtime ran batches of another size, over float32 results an ulp apart)."""
    assert merged.passed == whole.passed and merged.problem == whole.problem
    assert merged.failing_samples == whole.failing_samples and merged.failing_sample_count == whole.failing_sample_count
    assert merged.decision == whole.decision and merged.histogram == whole.histogram
    if whole.stats is None:
        assert merged.stats is None
        return
    for name in STAT_FIELDS:
        assert same(getattr(merged.stats, name), getattr(whole.stats, name)), name
    assert merged.stats.mean_abs == pytest.approx(whole.stats.mean_abs, rel=mean_rel, abs=1e-300)
    assert merged.stats.mean_rel == pytest.approx(whole.stats.mean_rel, rel=mean_rel, abs=1e-300)


def same(a, b) -> bool:
    """Equal, NaN counting as equal to NaN (a worst element may be a served NaN)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def judge(total: int, scores: bool) -> OutputAccumulator:
    return OutputAccumulator(
        "y", Tolerance(atol=1e-3, rtol=1e-3), total, scores=scores, histogram=True, min_decision_agreement=0.9
    )


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 120),
    width=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 120), max_size=5),
    noise=st.sampled_from([0.0, 1e-5, 1e-2, 1.0]),
    keep_all=st.booleans(),
    scores=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_shards_merged_equal_one_pass(rows, width, cuts, noise, keep_all, scores, seed):
    rng = np.random.default_rng(seed)
    research = rng.normal(size=(rows, width)).astype(np.float32)
    serve = research + rng.normal(scale=noise, size=research.shape).astype(np.float32) * (rng.random((rows, 1)) < 0.3)
    if rows > 3:
        serve[rows // 2, 0] = np.nan  # a NaN mismatch: an infinite error, counted apart
    previous = accumulator_module.KEEP_ALL_ELEMENTS
    accumulator_module.KEEP_ALL_ELEMENTS = 10**9 if keep_all else 8  # the top-1% regime on small sets too
    try:
        whole = judge(serve.size, scores)
        for first in range(0, rows, 7):
            whole.add(serve[first : first + 7], research[first : first + 7], first)
        bounds = sorted({0, rows, *[c for c in cuts if c < rows]})
        shards = []
        for start, end in itertools.pairwise(bounds):
            shard = judge(serve.size, scores)  # sized by the whole set, numbered in it
            for first in range(start, end, 7):
                shard.add(serve[first : min(first + 7, end)], research[first : min(first + 7, end)], first)
            shards.append(shard)
        merged = shards[0]
        for shard in shards[1:]:
            merged.merge(shard)
        assert_same_comparison(merged.finish(), whole.finish())
    finally:
        accumulator_module.KEEP_ALL_ELEMENTS = previous


def test_a_shard_judged_for_another_set_is_refused():
    a, b = judge(10, False), judge(20, False)
    with pytest.raises(ValueError, match="shards must be judged as parts of one set"):
        a.merge(b)


def merged_of(parts: list[tuple[np.ndarray, np.ndarray, int]], total: int, **options) -> OutputAccumulator:
    """Each (serve, research, first) part judged by its own accumulator, then merged in order."""
    judges = []
    for serve, research, first in parts:
        j = OutputAccumulator("y", Tolerance(atol=1e-3, rtol=1e-3), total, **options)
        if serve.size:
            j.add(serve, research, first)
        judges.append(j)
    for j in judges[1:]:
        judges[0].merge(j)
    return judges[0]


def whole_of(parts: list[tuple[np.ndarray, np.ndarray, int]], total: int, **options) -> OutputAccumulator:
    j = OutputAccumulator("y", Tolerance(atol=1e-3, rtol=1e-3), total, **options)
    for serve, research, first in parts:
        if serve.size:
            j.add(serve, research, first)
    return j


def test_near_ties_and_per_position_decisions_merge_even_past_an_empty_shard():
    """Rank-3 scores (a decision per position) with near-ties in two shards and an empty shard between."""
    research = np.zeros((6, 4, 3), np.float32)
    research[..., 0], research[..., 1] = 1.0, 1.0 + 1e-5  # a near-tie at every position
    serve = research.copy()
    serve[::2, :, 0] += 2e-5  # flipped, within the tie band: ties, not disagreements
    empty = np.zeros((0, 4, 3), np.float32)
    parts = [(serve[:3], research[:3], 0), (empty, empty, 3), (serve[3:], research[3:], 3)]
    merged = merged_of(parts, research.size, scores=True, max_tie_share=1.0).finish()
    whole = whole_of(parts, research.size, scores=True, max_tie_share=1.0).finish()
    assert whole.decision.ties > 0 and whole.decision.per_position
    assert merged.decision == whole.decision
    assert_same_comparison(merged, whole)


def test_exact_outputs_merge_as_exact_even_past_an_empty_shard():
    """Integer class ids with scores=True: exact outputs take no argmax decision, merged or not."""
    research = np.arange(12, dtype=np.int64).reshape(6, 2)
    serve = research.copy()
    serve[4, 1] += 1
    empty = np.zeros((0, 2), np.int64)
    parts = [(serve[:3], research[:3], 0), (empty, empty, 3), (serve[3:], research[3:], 3)]
    merged = merged_of(parts, research.size, scores=True).finish()
    whole = whole_of(parts, research.size, scores=True).finish()
    assert whole.decision is None and not whole.passed
    assert_same_comparison(merged, whole)


def test_the_first_shards_problem_is_the_merged_problem():
    good = (np.ones((2, 3)), np.ones((2, 3)), 0)
    bad = (np.ones((2, 4)), np.ones((2, 3)), 2)
    worse = (np.ones((2, 5)), np.ones((2, 3)), 4)
    for parts in ([good, bad, worse], [bad, good, worse]):
        merged = merged_of(parts, 18).finish()
        whole = whole_of(parts, 18).finish()
        assert merged.problem is not None and merged.problem == whole.problem and not merged.passed


def test_a_shard_with_histograms_does_not_merge_into_one_without():
    with pytest.raises(ValueError, match="by the same rules"):
        judge(10, False).merge(OutputAccumulator("y", Tolerance(atol=1e-3, rtol=1e-3), 10))


def test_listed_samples_are_the_failing_the_disagreeing_and_the_worst():
    research = np.zeros((8, 3), np.float32)
    research[:, 0] = 1.0
    serve = research.copy()
    serve[2, 1] = 2.0  # fails and flips its decision
    serve[5, 2] = 0.5  # fails, decision kept
    j = OutputAccumulator("y", Tolerance(atol=1e-3, rtol=1e-3), research.size, scores=True)
    j.add(serve[:4], research[:4], 10)
    j.add(serve[4:], research[4:], 14)
    assert j.listed_samples() == {12, 15}
    assert j.disagreeing == [12] and {i for _, i in j.failing} == {12, 15} and j.worst[0][0] == 12
    clean = OutputAccumulator("y", Tolerance(atol=1e-3, rtol=1e-3), research.size)
    clean.add(research, research, 3)
    assert clean.listed_samples() == {3}  # nothing failed: only the worst (first) element's sample


def test_merged_lists_stop_at_the_same_ten_samples_one_pass_lists():
    research = np.tile(np.array([[1.0, 0.0]], np.float32), (30, 1))
    serve = research[:, ::-1].copy()  # every sample flips its decision and fails
    parts = [(serve[:15], research[:15], 0), (serve[15:], research[15:], 15)]
    merged = merged_of(parts, research.size, scores=True).finish()
    whole = whole_of(parts, research.size, scores=True).finish()
    assert len(whole.decision.disagreeing_samples) == 10 and merged.decision == whole.decision
    assert_same_comparison(merged, whole)


def test_nothing_seen_or_a_scalar_output_names_no_sample():
    fresh = OutputAccumulator("y", Tolerance(atol=1e-3, rtol=1e-3), 4)
    assert fresh.listed_samples() == set()
    scalar = OutputAccumulator("y", Tolerance(atol=1e-3, rtol=1e-3), 1)
    scalar.add(np.float32(2.0), np.float32(1.0))  # a 0-d output: its worst element has no sample
    assert scalar.worst[0] == [] and scalar.listed_samples() == set()
