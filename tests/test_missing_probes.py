"""Every path the fitted preprocessing can take is probed: missing values included (issue 27, item 4).

Was: research imputed ``income`` with its median, serving imputed 0, and the reference rows held no
NaN in ``income``: check, ``check --url`` and ``diff`` all passed, diff even printing the fill change
49,839.7 -> 0 and saying B "can replace A".
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest
import torch

import paritybundle
from paritybundle import preprocess as pp
from paritybundle.cli import main
from paritybundle.reports.strength import coverage_lines

RNG = np.random.default_rng(0)
TRAIN = {
    "income": RNG.normal(50_000, 10_000, 500).astype(np.float32),
    "age": RNG.uniform(20, 70, 500).astype(np.float32),
}
TRAIN["income"][::10] = np.nan
REFERENCES = {name: values[1::10][:40].copy() for name, values in TRAIN.items()}  # income never missing


def _export(out, fill: str, *, probes: bool = True):
    impute = pp.Impute("median") if fill == "median" else pp.Impute("constant", fill_value=0.0)
    pre = pp.Columns({"income": [impute], "age": [pp.Standardize()]}).fit(TRAIN)  # only the fill differs
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3)).eval()
    coverage: Any = importlib.import_module("paritybundle.training.coverage")
    saved = coverage.missing_value_step
    if not probes:  # as exports made before the missing-value probes
        coverage.missing_value_step = lambda column: None
    try:
        return paritybundle.export(model, out, preprocess=pre, reference_inputs=REFERENCES, name="income").path
    finally:
        coverage.missing_value_step = saved


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("a") / "median", "median")


def test_export_probes_the_missing_value_path_the_references_never_take(research):
    assert not np.isnan(REFERENCES["income"]).any()
    manifest = paritybundle.load(research).manifest
    (reason,) = [r for r in manifest.coverage.probe_reasons if "NaN" in r]
    assert reason.startswith("income = NaN: missing, replaced by the fitted impute (strategy=median, fill=[")
    assert manifest.coverage.nan_rows == {"income": 1}
    assert any(line.startswith("probe: income = NaN") for line in coverage_lines(manifest.coverage))
    assert paritybundle.check(research).passed


def test_serving_that_imputes_zero_fails_check_and_diff(research, tmp_path, capsys):
    serving = _export(tmp_path / "zero", "zero")
    assert main(["diff", str(research), str(serving)]) == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert "DIFFERS: B does not reproduce A" in out and "it can replace A" not in out


def test_diff_of_bundles_whose_references_never_miss_a_value_fails_naming_the_unexercised_fill(tmp_path, capsys):
    a, b = _export(tmp_path / "a", "median", probes=False), _export(tmp_path / "b", "zero", probes=False)
    from paritybundle.commands.diff import diff

    report = diff(a, b)
    assert all(run.passed for run in report.behaviour)  # both runs agree: neither takes the missing path
    assert not report.passed and not report.reproduces
    (sentence,) = report.unexercised
    assert (
        "the fitted impute of 'income' changed" in sentence
        and "neither reference set holds a missing 'income'" in sentence
    )
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert "DIFFERS: B is not shown to reproduce A" in out and "it can replace A" not in out
