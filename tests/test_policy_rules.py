"""How the policy reaches each output, and the manifest's own limits, rule by rule.

Written against the mutants ``make mutation`` found surviving in ``parity/judge.py``,
``parity/tolerance.py``, ``parity/decision.py``, ``bundle/manifest.py`` and ``bundle/strict.py``
(docs/mutation.md): settings the judge dropped on the way to the accumulator, boundaries tested
on one side only, limits nobody reached.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from paritybundle.bundle import strict
from paritybundle.bundle.manifest import (
    MAX_MANIFEST_BYTES,
    ReferenceSet,
    TensorSpec,
    Tolerance,
    parse_manifest,
    validate_name,
)
from paritybundle.errors import BundleInvalid, UsageError
from paritybundle.parity.decision import decision_agreement
from paritybundle.parity.judge import judge_for, tolerance_overrides
from paritybundle.parity.tolerance import (
    NOISE_FACTOR,
    PRECISIONS,
    SPREAD_SHARE,
    default_policy,
    default_tolerance,
    output_scale,
    scale_policy,
    scaled_tolerance,
    tolerance_exceeds_outputs,
)

SCORES = TensorSpec(name="y", dtype="float32", shape=["batch", 3], kind="scores")


def _policy(**changes):
    return default_policy("cpu", "fp32").model_copy(update=changes)


# --- the judge: every setting of the policy reaches the accumulator ------------------------------------


def test_the_judge_carries_the_policys_decision_settings():
    policy = _policy(min_decision_agreement=0.9, max_tie_share=0.3)
    judge = judge_for(SCORES, policy, 6)
    research = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    judge.add(research.copy(), research)
    decision = judge.finish().decision
    assert (decision.min_agreement, decision.max_tie_share) == (0.9, 0.3)


def test_the_judge_draws_a_histogram_only_when_asked():
    research = np.ones((2, 3))
    quiet = judge_for(SCORES, _policy(), 6)
    quiet.add(research, research)
    assert quiet.finish().histogram is None
    drawn = judge_for(SCORES, _policy(), 6, histogram=True)
    drawn.add(research, research)
    assert drawn.finish().histogram is not None


def test_an_outputs_own_tolerance_judges_it_and_its_ties_even_under_an_override():
    own, override = Tolerance(atol=0.5, rtol=0.0), Tolerance(atol=9.0, rtol=0.0)
    policy = _policy(per_output={"y": own})
    assert judge_for(SCORES, policy, 6).tolerance == own
    overridden = judge_for(SCORES, policy, 6, overrides={"y": override})
    assert overridden.tolerance == override and overridden.tie_tolerance == own
    assert judge_for(SCORES, policy, 6, baselines={"y": 0.25}).baseline_max_abs == 0.25


def test_tolerance_overrides_apply_to_named_outputs_and_refuse_unknown_ones(digits_bundle):
    from paritybundle.bundle.store import read_manifest

    manifest = read_manifest(digits_bundle)
    names = [o.name for o in manifest.outputs]
    loose = Tolerance(atol=1.0, rtol=0.0)
    assert tolerance_overrides(manifest, None, {names[0]: loose}) == {names[0]: loose}
    everywhere = tolerance_overrides(manifest, loose, None)
    assert everywhere == {name: loose for name in names}
    with pytest.raises(UsageError) as raised:
        tolerance_overrides(manifest, None, {"nope": loose})
    assert str(raised.value) == (
        f"tolerance override names output 'nope', but the bundle's outputs are {', '.join(names)}."
    )
    two = manifest.model_copy(
        update={"outputs": [*manifest.outputs, manifest.outputs[0].model_copy(update={"name": "extra"})]}
    )
    with pytest.raises(UsageError) as raised:
        tolerance_overrides(two, None, {"nope": loose})
    assert str(raised.value).endswith(f"are {names[0]}, extra.")


# --- the presets and the scale-aware tolerance ------------------------------------------------------------


def test_the_default_preset_is_cpu_fp32_and_any_accelerator_counts_as_cuda():
    assert default_tolerance() == default_tolerance("cpu", "fp32")
    assert default_tolerance("cpu", "fp32") != default_tolerance("cuda", "fp32")
    for precision in PRECISIONS:
        assert default_tolerance("rocm", precision) == default_tolerance("cuda", precision)
    assert default_policy("cpu", "fp32").default == default_tolerance("cpu", "fp32")
    assert default_policy("cuda", "fp32").default == default_tolerance("cuda", "fp32")


def test_the_scale_of_a_half_precision_output_is_computed_in_float64():
    values = np.linspace(-3, 1000, 5000).astype(np.float16).reshape(50, 100)
    assert output_scale(values) == output_scale(values.astype(np.float64))
    assert output_scale(np.float64(4.0)) == (0.0, 4.0)


def test_a_share_of_the_spread_exactly_at_the_noise_floor_sets_the_rule_spread():
    spread = 0.05
    share = SPREAD_SHARE * spread
    export_error = share / NOISE_FACTOR
    assert NOISE_FACTOR * export_error == share  # the boundary is reached exactly
    preset = Tolerance(atol=1e-4, rtol=1e-3)
    tolerance, rule = scaled_tolerance(preset, spread, 0.0, export_error)
    assert rule == "spread" and tolerance.atol == share
    tolerance, rule = scaled_tolerance(preset, spread, 0.0, export_error * 1.01)
    assert rule == "noise" and tolerance.atol == pytest.approx(share * 1.01)


def test_scale_policy_skips_exact_outputs_and_uses_each_outputs_own_export_error():
    rng = np.random.default_rng(0)
    research = {"labels": np.arange(10), "a": rng.normal(size=(100, 4)) * 0.01, "b": rng.normal(size=(100, 4)) * 0.01}
    spread_b = output_scale(research["b"])[0]
    scaled = scale_policy(_policy(), research, {"b": 2 * SPREAD_SHARE * spread_b / NOISE_FACTOR}, set())
    assert "labels" not in scaled.scales
    assert scaled.scales["a"].rule == "spread"  # no export error given: no noise floor
    assert scaled.scales["b"].rule == "noise"  # its own error, times 10, is above 0.1% of its spread
    assert scaled.per_output["b"].atol == pytest.approx(2 * SPREAD_SHARE * spread_b)


def test_an_atol_reaching_the_spread_exactly_makes_the_check_unable_to_tell_models_apart():
    research = {"y": np.linspace(0.0, 1.0, 1001)}
    policy = scale_policy(_policy(), research, {}, set())
    spread = policy.scales["y"].spread
    at_spread = policy.model_copy(update={"per_output": {"y": Tolerance(atol=spread, rtol=0.0)}})
    assert tolerance_exceeds_outputs(at_spread) == ["y"]
    below = policy.model_copy(update={"per_output": {"y": Tolerance(atol=spread * 0.99, rtol=0.0)}})
    assert tolerance_exceeds_outputs(below) == []
    assert tolerance_exceeds_outputs(below, {"y": Tolerance(atol=spread, rtol=0.0)}) == ["y"]


# --- decisions: the boundary and the degenerate shapes ---------------------------------------------------


def test_a_margin_exactly_twice_the_bound_is_a_tie():
    research = np.array([[0.0, 1.0, 2.0]])
    served = np.array([[0.0, 3.0, 2.0]])  # serving picks class 1, whose research score is 1.0 below
    at_bound = decision_agreement(served, research, Tolerance(atol=0.5, rtol=0.0), 1.0)
    assert (at_bound.ties, at_bound.agreeing) == (1, 1)
    below = decision_agreement(served, research, Tolerance(atol=0.4999, rtol=0.0), 1.0)
    assert (below.ties, below.agreeing, below.disagreeing_samples) == (0, 0, [0])


@pytest.mark.parametrize(
    "shape, per_position", [((), False), ((0, 3), False), ((2, 0), False), ((2, 4, 0), True), ((0, 4, 3), True)]
)
def test_nothing_to_decide_is_full_agreement_with_no_ties(shape, per_position):
    empty = np.zeros(shape)
    decision = decision_agreement(empty, empty, Tolerance(atol=0.0, rtol=0.0), 0.5)
    assert (decision.samples, decision.agreeing, decision.ties, decision.agreement) == (0, 0, 0, 1.0)
    assert decision.per_position == per_position and decision.min_agreement == 0.5 and decision.passed


def test_per_position_disagreements_name_their_batch_rows():
    research = np.zeros((3, 4, 2))
    research[..., 0] = 1.0
    served = research.copy()
    served[2, 3] = [0.0, 1.0]  # the last position of the last sample flips
    served[0, 0] = [0.0, 1.0]
    decision = decision_agreement(served, research, Tolerance(atol=0.0, rtol=0.0), 1.0)
    assert decision.samples == 12 and decision.agreeing == 10 and decision.disagreeing_samples == [0, 2]


# --- the manifest's names, size and strictness -------------------------------------------------------


def test_a_bundle_name_is_one_to_128_safe_characters():
    assert validate_name("a") == "a" and validate_name("a" * 128) == "a" * 128
    message = "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
    for bad in ("", "a" * 129, "-a", "a b", "a/b", 5, None):
        with pytest.raises(ValueError) as raised:
            validate_name(bad)
        assert str(raised.value) == message


def _manifest_bytes(digits_bundle) -> bytes:
    return (digits_bundle / "bundle.json").read_bytes()


def test_a_manifest_may_be_exactly_the_limit_but_not_a_byte_more(digits_bundle):
    raw = _manifest_bytes(digits_bundle)
    padded = raw + b" " * (MAX_MANIFEST_BYTES - len(raw))
    assert parse_manifest(padded, source="m.json").name == parse_manifest(raw).name
    with pytest.raises(BundleInvalid) as raised:
        parse_manifest(padded + b" ", source="m.json")
    assert str(raised.value) == (
        f"m.json is {MAX_MANIFEST_BYTES + 1} bytes, larger than any manifest; the bundle is not valid."
    )


def test_a_manifest_that_is_not_json_is_named_a_manifest(digits_bundle):
    with pytest.raises(BundleInvalid) as raised:
        parse_manifest(b"{", source="m.json")
    assert str(raised.value).startswith("m.json is not a valid manifest: not valid JSON (")


def test_a_number_sent_as_a_string_is_refused_strictly(digits_bundle):
    data = json.loads(_manifest_bytes(digits_bundle))
    first = next(iter(data["files"]))
    data["files"][first]["bytes"] = str(data["files"][first]["bytes"])
    with pytest.raises(BundleInvalid, match=rf"files\.{first}\.bytes"):
        parse_manifest(json.dumps(data).encode(), source="m.json")


def test_the_manifest_is_written_with_two_space_indents(digits_bundle):
    text = parse_manifest(_manifest_bytes(digits_bundle)).to_json()
    assert text.startswith('{\n  "') and text.endswith("}\n") and '\n   "' not in text.split("\n", 2)[1]


def test_a_reference_set_without_groups_is_one_group_with_its_own_files():
    references = ReferenceSet(
        inputs="i.npz", outputs="o.npz", features="f.npz", samples=4, device="cpu", precision="fp32"
    )
    (group,) = references.all_groups()
    assert (group.inputs, group.outputs, group.features, group.samples) == ("i.npz", "o.npz", "f.npz", 4)


def test_a_sample_numbered_across_groups_is_located_in_its_group():
    from paritybundle.bundle.manifest import ReferenceGroup

    groups = [
        ReferenceGroup(inputs="i.npz", outputs="o.npz", samples=3),
        ReferenceGroup(inputs="reference/group_1/i.npz", outputs="reference/group_1/o.npz", samples=2),
    ]
    references = ReferenceSet(inputs="i.npz", outputs="o.npz", samples=5, device="cpu", precision="fp32", groups=groups)
    assert [references.locate(k) for k in range(5)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert references.locate(7) == (1, 4)  # past the end: the last group, counted on
    three = references.model_copy(
        update={
            "samples": 6,
            "groups": [
                *groups,
                ReferenceGroup(inputs="reference/group_2/i.npz", outputs="reference/group_2/o.npz", samples=1),
            ],
        }
    )
    assert [three.locate(k) for k in (2, 3, 4, 5)] == [(0, 2), (1, 0), (1, 1), (2, 0)]
    single = ReferenceSet(inputs="i.npz", outputs="o.npz", samples=4, device="cpu", precision="fp32")
    assert single.locate(3) == (0, 3)


# --- strict JSON: the caps on what an error message repeats ---------------------------------------------


def test_a_duplicate_key_is_named_by_its_first_80_characters():
    key = "k" * 100
    raw = b'{"' + key.encode() + b'": 1, "' + key.encode() + b'": 2}'
    with pytest.raises(BundleInvalid) as raised:
        strict.load_json_document(raw, "m.json", "manifest")
    assert (
        str(raised.value) == f"m.json is not a valid manifest (the key '{'k' * 80}' appears twice in one object); "
        "re-export the bundle."
    )


def test_a_duplicate_key_is_named_by_at_most_80_characters_and_the_reason_by_200():
    key = "\x01" * 100  # each control character takes four characters in the repr
    raw = json.dumps({key: 1, "k": 2}).encode()[:-1] + b", " + json.dumps(key).encode() + b": 3}"
    with pytest.raises(BundleInvalid) as raised:
        strict.load_json_document(raw, "m.json", "manifest")
    reason = f"the key {key[:80]!r} appears twice in one object"
    assert len(reason) > 200
    assert str(raised.value) == f"m.json is not a valid manifest ({reason[:200]}); re-export the bundle."


def test_a_summary_of_exactly_five_problems_has_no_count_and_long_locations_are_cut():
    with pytest.raises(ValidationError) as raised:
        TensorSpec.model_validate({"name": "", "dtype": "complex", "shape": [-1], "kind": "?", "x" * 200: 1})
    assert raised.value.error_count() == 5
    summary = strict.validation_summary(raised.value)
    assert summary.split("; ")[-1] == f"{'x' * 120}: Extra inputs are not permitted" and "more)" not in summary
