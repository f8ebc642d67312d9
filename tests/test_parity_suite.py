"""parity_tests/: the suite a deployment pipeline runs, `pytest parity_tests --bundle PATH [--url URL]`,
one test per check, read back from its --junitxml as a CI system would."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from test_signing import _keypair

from bundle_tools import perturb_weights

ROOT = Path(__file__).resolve().parent.parent


def run_suite(tmp_path, *args):
    report = tmp_path / "parity.xml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "parity_tests"),
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={report}",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        outcomes[case.get("name")] = outcome
    return result, outcomes


def test_a_good_bundle_passes_every_check_with_one_result_each(wine_bundle, tmp_path):
    result, outcomes = run_suite(tmp_path, "--bundle", wine_bundle)
    assert result.returncode == 0, result.stdout[-3000:]
    assert outcomes == {
        "test_integrity": "passed",
        "test_signature": "skipped",
        "test_environment": "passed",
        "test_output_parity[scores]": "passed",
        "test_decision_agreement[scores]": "passed",
        "test_stage[preprocess]": "passed",
        "test_stage[model]": "passed",
        "test_stage[merge]": "passed",
    }


def test_perturbed_weights_fail_the_parity_checks_only(bundle_copy, tmp_path):
    perturb_weights(bundle_copy, relative_noise=0.001)
    result, outcomes = run_suite(tmp_path, "--bundle", bundle_copy)
    assert result.returncode == 1
    assert outcomes["test_output_parity[logits]"] == "failure" and outcomes["test_integrity"] == "passed"
    assert outcomes["test_stage[None]"] == "skipped"  # no preprocessing in the digits bundle
    assert "output 'logits' failed" in result.stdout


def test_a_tampered_bundle_fails_integrity_and_nothing_else_runs(bundle_copy, tmp_path):
    (bundle_copy / "model.onnx").write_bytes(b"tampered")
    result, outcomes = run_suite(tmp_path, "--bundle", bundle_copy)
    assert result.returncode == 1 and outcomes["test_integrity"] == "failure"
    assert {outcomes[name] for name in outcomes if name != "test_integrity"} == {"skipped"}


def test_signature_is_its_own_check(bundle_copy, tmp_path):
    from paritybundle.commands.sign import sign

    private, public = _keypair(tmp_path)
    sign(bundle_copy, private)
    result, outcomes = run_suite(tmp_path, "--bundle", bundle_copy, "--key", public)
    assert result.returncode == 0 and outcomes["test_signature"] == "passed"
    _, other = _keypair(tmp_path, "other")
    result, outcomes = run_suite(tmp_path, "--bundle", bundle_copy, "--key", other)
    assert result.returncode == 1 and outcomes["test_signature"] == "failure"


def test_a_live_endpoint(wine_bundle, tmp_path):
    from serving_tools import running_server

    with running_server(wine_bundle, tmp_path) as server:
        result, outcomes = run_suite(tmp_path, "--bundle", wine_bundle, "--url", server.url)
    assert result.returncode == 0, result.stdout[-3000:]
    assert outcomes["test_output_parity[scores]"] == "passed" and outcomes["test_environment"] == "skipped"
    assert outcomes["test_stage[preprocess]"] == "skipped"


def test_without_bundle_it_says_what_to_pass(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "parity_tests"), "-p", "no:cacheprovider", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0 and "parity_tests needs --bundle PATH" in result.stdout + result.stderr
