"""The rules that judge a serving graph approximating research by design (issue 27, item 5), one by one,
in-process (mutation testing runs these: docs/mutation.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from paritybundle.bundle.manifest import (
    Approximation,
    ErrorBudget,
    MeasuredError,
    OutputScale,
    TensorSpec,
    Tolerance,
    TolerancePolicy,
)
from paritybundle.parity import accumulator as accumulator_module
from paritybundle.parity.explain import explain_failure
from paritybundle.parity.histogram import LogHistogram as _Histogram
from paritybundle.parity.judge import judge_for
from paritybundle.parity.localise import StageResult, diagnose
from paritybundle.parity.tolerance import default_policy, default_tolerance, tolerance_exceeds_outputs

BUDGET = ErrorBudget(p50=0.1, p99=0.5, max=1.0)


def _policy(min_agreement: float = 0.98, budgets: dict[str, ErrorBudget] | None = None) -> TolerancePolicy:
    approximation = Approximation(
        serving_graph="int8.onnx",
        serving_precision="int8",
        min_decision_agreement=min_agreement,
        score_error={"logits": BUDGET} if budgets is None else budgets,
    )
    return default_policy().model_copy(update={"approximation": approximation})


LOGITS = TensorSpec(name="logits", dtype="float32", shape=["batch", 4], kind="scores")
LABEL = TensorSpec(name="label", dtype="int64", shape=["batch"])


def _judge(spec: TensorSpec, research: np.ndarray, serve: np.ndarray, policy: TolerancePolicy | None = None, **kw):
    judge = judge_for(spec, policy or _policy(), research.size, **kw)
    judge.add(serve, research)
    return judge.finish()


def _errors(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Research logits with a clear winner per row, and serving ones off by ``errors`` (winner kept)."""
    rows = errors.size // 4
    research = np.tile(np.array([10.0, 0.0, 0.0, 0.0]), (rows, 1))
    return research, research + errors.reshape(rows, 4)


def test_errors_within_every_quantile_pass_and_the_median_is_reported():
    errors = np.full(400, 0.05)
    errors[:3] = 0.4  # under 1%: p99 stays 0.05... until there are more
    research, serve = _errors(errors)
    c = _judge(LOGITS, research, serve)
    assert c.passed and c.budget is not None and c.budget.budget == BUDGET
    assert c.budget.p50_abs == pytest.approx(0.05) and not c.budget.p50_is_bound
    assert c.tolerance == Tolerance(atol=1.0, rtol=0.0)  # the budget's max is the element-wise bound


@pytest.mark.parametrize(
    "which, errors, expected",
    [
        ("p50", np.r_[np.full(200, 0.11), np.zeros(199)], "p50 0.11 > 0.1"),
        ("p99", np.r_[np.full(8, 0.6), np.zeros(392)], "p99 0.6 > 0.5"),
        ("max", np.r_[[1.01], np.zeros(399)], "max 1.01 > 1"),
    ],
)
def test_each_quantile_over_its_budget_fails(which, errors, expected):
    research, serve = _errors(np.resize(errors, 400))
    c = _judge(LOGITS, research, serve)
    assert not c.passed
    sentence = explain_failure(c)
    assert f"absolute error {expected} over the declared budget (p50 0.1, p99 0.5, max 1)" in sentence
    assert ("outside atol" in sentence) is False and "would have passed" not in sentence
    assert c.budget.over(c.stats) == [expected]


def test_exactly_at_the_budget_passes():
    errors = np.r_[np.full(3, 1.0), np.full(5, 0.5), np.full(200, 0.1), np.zeros(192)]
    research, serve = _errors(errors)
    c = _judge(LOGITS, research, serve)
    assert (c.budget.p50_abs, c.stats.max_abs) == (pytest.approx(0.1), 1.0)
    assert c.passed, explain_failure(c)


def test_decisions_below_the_declared_agreement_fail_naming_the_flipped_samples():
    research = np.tile(np.array([1.0, 0.0, 0.0, 0.0]), (100, 1))
    serve = research.copy()
    serve[[3, 7], 0], serve[[3, 7], 2] = 0.0, 0.9  # two rows flip to class 2, errors within budget
    assert _judge(LOGITS, research, serve, _policy(min_agreement=0.98)).passed
    c = _judge(LOGITS, research, serve, _policy(min_agreement=0.99))
    assert not c.passed and c.decision.disagreeing_samples == [3, 7] and c.decision.min_agreement == 0.99
    assert "argmax agrees on 98.00% of samples, below 99% (flipped samples: [3, 7])" in explain_failure(c)


def test_labels_of_an_approximating_graph_are_judged_by_their_agreement():
    research = np.arange(100) % 3
    serve = research.copy()
    serve[[5, 50]] = 9
    c = _judge(LABEL, research, serve, _policy(min_agreement=0.98))
    assert c.passed and c.decision.labels and c.decision.agreement == 0.98 and c.budget is None
    c = _judge(LABEL, research, serve, _policy(min_agreement=0.985))
    assert not c.passed
    assert explain_failure(c) == (
        "output 'label' failed: labels agree on 98.00% of samples, below 98.50% (flipped samples: [5, 50])."
    )
    # Without an approximation a changed label fails whatever the share.
    plain = judge_for(LABEL, default_policy(), research.size)
    plain.add(serve, research)
    assert not plain.finish().passed and plain.finish().decision is None


def test_labels_of_several_per_row_are_counted_as_positions():
    research = np.zeros((10, 3), dtype=np.int64)
    serve = research.copy()
    serve[4, 1] = 1
    c = _judge(TensorSpec(name="top3", dtype="int64", shape=["batch", 3]), research, serve, _policy(min_agreement=0.9))
    assert c.passed and c.decision.per_position and c.decision.samples == 30 and c.decision.agreeing == 29


def test_a_check_time_override_adds_an_element_wise_bound_and_never_loosens_the_budget():
    errors = np.r_[np.full(2, 3.0), np.zeros(398)]
    research, serve = _errors(errors)
    assert not _judge(LOGITS, research, serve).passed
    loose = _judge(LOGITS, research, serve, overrides={"logits": Tolerance(atol=5.0, rtol=0.0)})
    assert not loose.passed and loose.tolerance.atol == 5.0 and loose.budget.over(loose.stats) == ["max 3 > 1"]
    research, serve = _errors(np.full(400, 0.05))
    assert _judge(LOGITS, research, serve).passed
    tight = _judge(LOGITS, research, serve, overrides={"logits": Tolerance(atol=0.01, rtol=0.0)})
    assert not tight.passed and tight.stats.violations == 400


def test_outputs_without_a_budget_keep_their_tolerance_and_decisions_take_the_declared_agreement():
    policy = _policy(budgets={})
    judge = judge_for(LOGITS, policy, 8)
    assert judge.budget is None and judge.tolerance == policy.default and judge.min_decision_agreement == 0.98
    assert judge_for(LOGITS, default_policy(), 8).min_decision_agreement == 1.0
    assert not judge_for(LABEL, default_policy(), 8).decide_labels and judge_for(LABEL, policy, 8).decide_labels


def test_the_median_beyond_the_kept_elements_is_bounded_by_its_bin(monkeypatch):
    monkeypatch.setattr(accumulator_module, "KEEP_ALL_ELEMENTS", 100)
    errors = np.random.default_rng(0).uniform(0, 0.2, size=400)
    research, serve = _errors(errors)
    c = _judge(LOGITS, research, serve, _policy(budgets={"logits": ErrorBudget(p50=1.0, p99=1.0, max=1.0)}))
    true_median = float(np.percentile(errors, 50, method="higher"))
    assert c.budget.p50_is_bound and true_median <= c.budget.p50_abs <= true_median * 10**0.25


def test_median_bound_edges():
    histogram = _Histogram()
    histogram.add(np.array([0.0, 0.0, 0.0, 1e-3]))
    assert histogram.median_bound() == 0.0
    histogram.add(np.array([1e-3, 1e-3]))  # 3 zeros, 3 of 1e-3: the higher middle is 1e-3
    assert 1e-3 <= histogram.median_bound() <= 1e-3 * 10**0.25
    infinite = _Histogram()
    infinite.add(np.array([np.inf, np.inf, 1.0]))
    assert infinite.median_bound() == np.inf


def test_budgeted_accumulators_merge_to_the_single_pass_verdict(monkeypatch):
    errors = np.random.default_rng(1).uniform(0, 0.3, size=800)
    research, serve = _errors(errors)
    whole = _judge(LOGITS, research, serve)
    first, second = judge_for(LOGITS, _policy(), research.size), judge_for(LOGITS, _policy(), research.size)
    first.add(serve[:100], research[:100])
    second.add(serve[100:], research[100:], first_sample=100)
    first.merge(second)
    merged = first.finish()
    assert merged.budget == whole.budget and merged.passed == whole.passed and merged.stats == whole.stats
    other = judge_for(LOGITS, _policy(budgets={"logits": ErrorBudget(p50=0.2, p99=0.5, max=1.0)}), research.size)
    with pytest.raises(ValueError, match="by the same rules"):
        first.merge(other)


def test_the_manifest_writes_an_approximation_only_when_there_is_one():
    assert "approximation" not in json.loads(default_policy().model_dump_json())
    written = json.loads(_policy().model_dump_json())["approximation"]
    assert written["serving_precision"] == "int8" and written["score_error"]["logits"]["p99"] == 0.5
    assert TolerancePolicy.model_validate_json(_policy().model_dump_json()) == _policy()
    with pytest.raises(ValueError, match="p50 <= p99 <= max"):
        ErrorBudget(p50=0.2, p99=0.1, max=1.0)
    with pytest.raises(ValueError, match="p50 <= p99 <= max"):
        ErrorBudget(p50=0.1, p99=0.2, max=0.15)
    with pytest.raises(ValueError):
        ErrorBudget(p50=-1.0, p99=0.1, max=1.0)
    with pytest.raises(ValueError):
        MeasuredError(agreement=1.5)


def test_a_budget_whose_median_reaches_the_outputs_spread_is_noticed():
    scales = {"logits": OutputScale(spread=0.08, max_abs=1.0, rule="spread")}
    policy = _policy().model_copy(update={"scales": scales})
    assert tolerance_exceeds_outputs(policy) == ["logits"]  # p50 0.1 >= spread 0.08
    narrow = _policy(budgets={"logits": ErrorBudget(p50=0.01, p99=0.5, max=1.0)}).model_copy(update={"scales": scales})
    assert tolerance_exceeds_outputs(narrow) == []
    assert tolerance_exceeds_outputs(narrow, {"logits": Tolerance(atol=0.1, rtol=0)}) == ["logits"]


def test_int8_is_an_accepted_reference_precision():
    assert default_tolerance("cpu", "int8") == Tolerance(atol=0.05, rtol=0.05)
    assert default_tolerance("cuda", "int8") == Tolerance(atol=0.05, rtol=0.05)
    assert default_policy("cpu", "int8").min_decision_agreement == 0.99


def test_a_lone_row_missing_the_budget_is_blamed_on_quantized_batching():
    alone = StageResult(
        stage="rows alone", file="pipeline.onnx, reference rows 0, 9 one request each", passed=False, outputs=[]
    )
    sentence = diagnose([alone], True, "int8")
    assert sentence.startswith("batch composition: the int8 serving graph meets its approximation budget")
    assert "BatchNorm" not in sentence and "BatchNorm" in diagnose([alone], True)


def test_the_median_bound_is_the_upper_edge_of_the_median_values_bin():
    histogram = _Histogram()
    histogram.add(np.array([0.0, 0.0, 1e-3, 1e-2, 1e-1]))  # five values: the median is the third, 1e-3
    assert histogram.median_bound() == pytest.approx(10**-2.75)


def test_an_even_count_takes_the_higher_middle_value_as_its_median():
    research, serve = _errors(np.r_[np.zeros(2), np.full(2, 0.08), np.zeros(4)])  # errors 0 x6, 0.08 x2
    assert _judge(LOGITS, research, serve).budget.p50_abs == 0.0
    research, serve = _errors(np.r_[np.zeros(4), np.full(4, 0.08)])  # four of each: the higher middle is 0.08
    assert _judge(LOGITS, research, serve).budget.p50_abs == pytest.approx(0.08)


def test_no_elements_meet_any_budget_and_one_element_is_its_own_median():
    empty = _judge(LOGITS, np.zeros((0, 4)), np.zeros((0, 4)))
    assert empty.passed and empty.budget.p50_abs == 0.0
    single = TensorSpec(name="logits", dtype="float32", shape=["batch"])
    c = _judge(single, np.array([1.0]), np.array([1.3]))
    assert c.budget.p50_abs == pytest.approx(0.3) and not c.passed


def test_budgeted_accumulators_past_the_kept_elements_merge_their_median_bins(monkeypatch):
    monkeypatch.setattr(accumulator_module, "KEEP_ALL_ELEMENTS", 100)
    errors = np.r_[np.full(300, 0.05), np.full(100, 0.3)]
    research, serve = _errors(errors)
    whole = _judge(LOGITS, research, serve, _policy(budgets={"logits": ErrorBudget(p50=1.0, p99=1.0, max=1.0)}))
    policy = _policy(budgets={"logits": ErrorBudget(p50=1.0, p99=1.0, max=1.0)})
    first, second = judge_for(LOGITS, policy, research.size), judge_for(LOGITS, policy, research.size)
    first.add(serve[:75], research[:75])  # rows 0-74: every error 0.05; the 0.3s all fall to the second shard
    second.add(serve[75:], research[75:], first_sample=75)
    first.merge(second)
    merged = first.finish()
    assert merged.budget == whole.budget and merged.budget.p50_is_bound
    assert 0.05 <= merged.budget.p50_abs < 0.3


def test_merged_label_shards_count_their_rows_once_each():
    research = np.arange(100) % 3
    serve = research.copy()
    serve[60] = 9
    policy = _policy(min_agreement=0.98)
    first, second = judge_for(LABEL, policy, research.size), judge_for(LABEL, policy, research.size)
    first.add(serve[:50], research[:50])
    second.add(serve[50:], research[50:], first_sample=50)
    first.merge(second)
    c = first.finish()
    assert c.passed and not c.decision.per_position and c.decision.samples == 100
    assert c.decision.disagreeing_samples == [60]
