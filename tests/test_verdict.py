"""A verdict that can tell models apart (issue 15): scale-aware tolerance, a bounded tie rule,
detection power measured at export, and reference rows chosen for coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from verdict_cases import (
    RareEvent,
    TinyLogits,
    build_cases,
    export_region,
    margin,
    rare_inputs,
    tiny_images,
)

import paritybundle
from paritybundle.bundle.manifest import Tolerance
from paritybundle.cli import main
from paritybundle.commands.diff import diff
from paritybundle.errors import WeakReferencesError
from paritybundle.parity.decision import decision_agreement
from paritybundle.parity.tolerance import scaled_tolerance


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return {case.name: case for case in build_cases(tmp_path_factory.mktemp("verdict"))}


CASE_NAMES = [
    case
    for case in (
        "tiny logits, another seed's graph (check)",
        "tiny logits, another seed (diff)",
        "rare-event scorer x1.2",
        "two rare categories swapped, never in the caller's rows",
        "weights + 0.1% noise",
        "weights rounded to fp16",
        "tiny logits untouched",
        "rare-event scorer untouched",
        "rare categories untouched",
        "digits untouched",
        "digits, --threads 1",
        "digits, --optimization disable",
        "region, --threads 1 --optimization disable",
        "two exports of the same model (diff)",
    )
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_defects_fail_and_benign_cases_pass(cases, name, capsys):
    """Each defect exits 1, each benign case exits 0, through the CLI as a pipeline runs it."""
    case = cases[name]
    args = (
        ["diff", str(case.bundle), str(case.other)]
        if case.command[0] == "diff"
        else [case.command[0], str(case.bundle), *case.command[1:]]
    )
    assert main(args) == (1 if case.defect else 0), capsys.readouterr().out[-3000:]


def test_the_defects_fail_by_a_wide_margin_and_the_benign_pass_by_one(cases):
    """Not near the line either way: defects use many times their tolerance, noise a small part of it."""
    for case in cases.values():
        report = diff(case.bundle, case.other) if case.command[0] == "diff" else paritybundle.check(case.bundle)
        if case.defect and case.command == ("check",):
            assert margin(report) > 10, (case.name, margin(report))
        elif not case.defect:
            assert margin(report) < 0.2, (case.name, margin(report))


# --- scale-aware tolerance ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spread, max_abs, error, rule",
    [
        (2e-9, 1e-9, 1e-16, "spread"),  # tiny logits: 0.1% of their spread, far below the preset
        (3e-4, 4e-4, 1e-7, "noise"),  # rare-event scores: the measured noise is the floor
        (40.0, 29.0, 7e-6, "preset"),  # logits of order 10: the preset is the tighter bound
        (1.0, 0.65, 4e-3, "preset"),  # bf16 GPU noise: the floor reaches past the preset, which stays
    ],
)
def test_the_absolute_tolerance_follows_the_output_and_never_goes_below_its_noise(spread, max_abs, error, rule):
    preset = Tolerance(atol=1e-4, rtol=1e-3)
    tolerance, chosen = scaled_tolerance(preset, spread, max_abs, error)
    assert chosen == rule
    assert tolerance.atol <= preset.atol and tolerance.rtol == preset.rtol
    assert tolerance.atol >= min(10 * error, preset.atol)  # legitimate noise always fits
    if rule == "spread":
        assert tolerance.atol == pytest.approx(1e-3 * spread)


def test_the_policy_and_its_reasons_are_recorded_per_output(cases):
    manifest = paritybundle.load(cases["tiny logits untouched"].bundle).manifest
    scale = manifest.tolerance.scales["output"]
    assert scale.rule == "spread" and scale.spread < 1e-8
    assert manifest.tolerance.for_output("output").atol < 1e-10 < manifest.tolerance.default.atol
    assert manifest.tolerance.max_tie_share == 0.01


def test_a_caller_tolerance_is_kept_and_a_loose_one_is_reported(tmp_path, capsys):
    bundle = paritybundle.export(
        TinyLogits(0),
        tmp_path / "b",
        reference_inputs=tiny_images(),
        name="tiny",
        per_output_tolerance={"output": Tolerance(atol=1e-4, rtol=1e-3)},
    ).path
    manifest = paritybundle.load(bundle).manifest
    assert manifest.tolerance.scales["output"].rule == "caller"
    assert manifest.tolerance.for_output("output").atol == 1e-4
    report = paritybundle.check(bundle)
    assert any("the tolerance is larger than the outputs" in notice for notice in report.notices)


# --- the tie rule, bounded --------------------------------------------------------------------------


def test_flips_between_near_equal_scores_fail_once_over_one_percent_of_samples():
    research = np.tile([[1.0, 1.0 + 1e-6, 0.0]], (100, 1))  # every sample a near tie
    serve = research[:, [1, 0, 2]]  # every argmax flips
    stats = decision_agreement(serve, research, Tolerance(atol=1e-4, rtol=1e-3), 1.0)
    assert stats.ties == 100 and stats.agreement == 1.0
    bounded = stats.model_copy(update={"max_tie_share": 0.01})
    assert not bounded.passed
    from paritybundle.parity.accumulator import OutputAccumulator
    from paritybundle.parity.explain import explain_failure

    accumulator = OutputAccumulator(
        "scores", Tolerance(atol=1e-4, rtol=1e-3), research.size, scores=True, max_tie_share=0.01
    )
    accumulator.add(serve, research)
    result = accumulator.finish()
    assert not result.passed
    assert "100 of 100 samples (100.0%) changed class between near-equal research scores" in explain_failure(result)


# --- detection power ------------------------------------------------------------------------------


def test_power_is_measured_at_export_and_shown_by_inspect_and_check(cases, capsys):
    digits = cases["digits untouched"].bundle
    power = paritybundle.load(digits).manifest.power
    assert power.measured and power.detected == 0.001
    for command in ("inspect", "check"):
        assert main([command, str(digits)]) == 0
        assert "this reference set detects a 0.1% weight perturbation" in capsys.readouterr().out


def test_a_reference_set_that_detects_nothing_says_why_and_can_be_refused(tmp_path, capsys):
    weak = paritybundle.export(RareEvent(), tmp_path / "rare", reference_inputs=rare_inputs(), name="rare").path
    power = paritybundle.load(weak).manifest.power
    assert power.detected is None and power.reasons
    with pytest.raises(WeakReferencesError, match="does not detect even a 1% weight perturbation"):
        paritybundle.export(
            RareEvent(), tmp_path / "refused", reference_inputs=rare_inputs(), name="rare", require_power=True
        )
    assert not (tmp_path / "refused").exists()
    one_class = paritybundle.export(TinyLogits(0), tmp_path / "few", reference_inputs=tiny_images(n=3), name="few").path
    reasons = paritybundle.load(one_class).manifest.power.reasons
    assert paritybundle.load(one_class).manifest.power.detected is None or reasons == []
    assert main(["inspect", str(weak)]) == 0
    assert "detects none of 0.1%, 1.0% weight perturbations" in capsys.readouterr().out


# --- coverage ---------------------------------------------------------------------------------------


def test_the_selection_covers_every_class_category_nan_and_extreme_within_the_budget(tmp_path):
    """Not the first N rows: rows that show what the data holds, then a random rest."""
    import torch

    from paritybundle import preprocess as pp

    rng = np.random.default_rng(0)
    n = 600
    amount = rng.gamma(2.0, 50.0, size=n).astype(np.float32)
    amount[450] = np.nan
    amount[500] = 9000.0  # the largest value, far from the first rows
    regions = np.array(list(rng.choice(["north", "south"], size=n)), dtype="<U6")
    regions[550] = "island"
    columns = {"amount": amount, "region": regions}
    pre = pp.Columns(
        {"amount": [pp.Impute("median"), pp.Standardize()], "region": [pp.OneHot()]}, output="features"
    ).fit(columns)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(pre.transform(columns).shape[1], 4))
    bundle = paritybundle.export(
        model, tmp_path / "b", preprocess=pre, reference_inputs=columns, name="cov", max_reference_samples=40
    ).path
    manifest = paritybundle.load(bundle).manifest
    coverage = manifest.coverage
    assert coverage.selection == "covering" and coverage.candidates == 600 and coverage.selected == 40
    kept = np.load(bundle / "reference" / "inputs.npz")
    assert "island" in set(kept["region"].ravel().tolist())
    assert np.isnan(kept["amount"]).any() and np.nanmax(kept["amount"]) == 9000.0
    assert coverage.categories["region"].seen == 3 and coverage.nan_rows["amount"] >= 1
    research = np.load(bundle / "reference" / "outputs.npz")["output"]
    all_classes = set(model(torch.from_numpy(pre.transform(columns))).argmax(1).tolist())
    assert set(research.argmax(1).tolist()) == all_classes == set(coverage.classes["output"])


def test_vocabulary_categories_the_rows_never_show_get_probe_rows_run_by_every_check(tmp_path, capsys):
    bundle = export_region(tmp_path / "region")
    coverage = paritybundle.load(bundle).manifest.coverage
    assert coverage.categories["region"].probed == ["island", "polar"]
    assert coverage.probes == 2 and coverage.selected == 64
    inputs = np.load(bundle / "reference" / "inputs.npz")
    assert inputs["region"][-2:].ravel().tolist() == ["island", "polar"]
    assert main(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "categories of region: 3 of 5 in the rows; probed: 'island', 'polar'" in out
    assert "probe: region = 'island': in the fitted vocabulary, never in the reference rows" in out


def test_probe_rows_are_validated_at_export_fail_closed(tmp_path, monkeypatch):
    """Probe rows go through the same fail-closed validation as every reference row: a research path
    that disagrees with its frozen graph on a probe is refused at export, naming the column."""
    from paritybundle import preprocess as pp
    from paritybundle.errors import ExportParityError

    real = pp.Columns.research

    def off_on_probes(self, raw):
        features = real(self, raw)
        if len(next(iter(raw.values()))) <= 2:  # the probe rows (the reference rows are 64)
            features = {name: value + 1.0 for name, value in features.items()}
        return features

    monkeypatch.setattr(pp.Columns, "research", off_on_probes)
    with pytest.raises(ExportParityError, match="preprocess.onnx.*column 'region'"):
        export_region(tmp_path / "region")
    assert not (tmp_path / "region").exists()


def test_strength_is_in_the_json_junit_html_and_diff(cases, tmp_path, capsys):
    digits = cases["digits untouched"].bundle
    assert (
        main(
            [
                "check",
                str(digits),
                "--json",
                str(tmp_path / "r.json"),
                "--junit",
                str(tmp_path / "r.xml"),
                "--html",
                str(tmp_path / "r.html"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["power"]["detected"] == 0.001 and report["coverage"]["selected"] > 0
    assert report["outputs"][0]["decision"]["max_tie_share"] == 0.01
    junit = (tmp_path / "r.xml").read_text()
    assert 'name="detection power"' in junit and 'name="coverage"' in junit
    assert "How strong this verdict is" in (tmp_path / "r.html").read_text()
    report = diff(digits, cases["tiny logits untouched"].bundle, expect_change=True)
    assert any(change.what == "detection power" for change in report.strength)
