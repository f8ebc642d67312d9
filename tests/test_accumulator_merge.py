"""The merge of judges from shards (parity.accumulator.OutputAccumulator.merge): equal to one pass.

A check split over workers (tests/test_cluster_checks.py) is only as good as this rule; hypothesis
draws sets, cuts and noise, in both regimes of the p99 buffer (every error kept, or the top 1%).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paritybundle.bundle.manifest import Tolerance
from paritybundle.parity import accumulator as accumulator_module
from paritybundle.parity.accumulator import OutputAccumulator

STAT_FIELDS = ("elements", "max_abs", "p99_abs", "max_rel", "p99_rel", "violations", "nonfinite_mismatches",
               "worst_sample", "worst_index", "worst_serve", "worst_research", "required_atol", "max_tolerance_ratio")


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
    return OutputAccumulator("y", Tolerance(atol=1e-3, rtol=1e-3), total, scores=scores, histogram=True,
                             min_decision_agreement=0.9)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 120), width=st.integers(1, 5), cuts=st.lists(st.integers(0, 120), max_size=5),
       noise=st.sampled_from([0.0, 1e-5, 1e-2, 1.0]), keep_all=st.booleans(), scores=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_shards_merged_equal_one_pass(rows, width, cuts, noise, keep_all, scores, seed):
    rng = np.random.default_rng(seed)
    research = rng.normal(size=(rows, width)).astype(np.float32)
    serve = research + rng.normal(scale=noise, size=research.shape).astype(np.float32) * (rng.random((rows, 1)) < 0.3)
    if rows > 3:
        serve[rows // 2, 0] = np.nan  # a NaN mismatch: an infinite error, counted apart
    previous = accumulator_module.KEEP_ALL_ELEMENTS
    accumulator_module.KEEP_ALL_ELEMENTS = 10 ** 9 if keep_all else 8  # the top-1% regime on small sets too
    try:
        whole = judge(serve.size, scores)
        for first in range(0, rows, 7):
            whole.add(serve[first:first + 7], research[first:first + 7], first)
        bounds = sorted({0, rows, *[c for c in cuts if c < rows]})
        shards = []
        for start, end in zip(bounds, bounds[1:]):
            shard = judge(serve.size, scores)  # sized by the whole set, numbered in it
            for first in range(start, end, 7):
                shard.add(serve[first:min(first + 7, end)], research[first:min(first + 7, end)], first)
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
