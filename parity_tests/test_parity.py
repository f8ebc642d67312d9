"""One test per check of a bundle (or a live endpoint serving it). A failure message is the
same sentence `bundle check` prints."""

from __future__ import annotations

import pytest

from paritybundle.parity.explain import explain_failure


def _opens(bundle, key=None):
    from paritybundle.bundle.store import open_bundle
    from paritybundle.errors import ParityBundleError

    try:
        return open_bundle(bundle, key), None
    except ParityBundleError as exc:
        return None, str(exc)


def test_integrity(options):
    """bundle.json parses and every listed file matches its sha256; no file is missing or extra."""
    bundle, problem = _opens(options.bundle)
    assert problem is None, problem
    assert bundle.manifest.files


def test_signature(options):
    """bundle.sig verifies with the given public key (it signs bundle.json, which hashes every file)."""
    if not options.key:
        pytest.skip("no --key (or $PARITYBUNDLE_PUBLIC_KEY) given: the signature is not checked")
    _, problem = _opens(options.bundle, options.key)
    assert problem is None, problem


def test_environment(options, verified):
    """This environment against the bundle's lock, under the drift policy."""
    if options.url:
        pytest.skip("checking a live endpoint: its environment is not visible from here")
    from paritybundle.runtime.load import bundle_drift

    drift = bundle_drift(verified, options.env_policy)
    critical = [f"{i.what}: {i.locked} -> {i.running} ({i.reason})" for i in drift.items if i.severity == "critical"]
    assert not drift.refused, f"refused by the {drift.policy} drift policy: " + "; ".join(critical)


def _comparison(report, name):
    return next(c for c in report.outputs if c.name == name)


def test_output_parity(report, output_name):
    """Every element within atol + rtol * |research| for this output."""
    comparison = _comparison(report, output_name)
    assert comparison.stats is not None and comparison.stats.violations == 0 and not comparison.problem, (
        explain_failure(comparison)
    )


def test_decision_agreement(report, score_output):
    """argmax agreement with research at or above the bundle's minimum."""
    decision = _comparison(report, score_output).decision
    assert decision is not None, "no decision statistics for this output"
    assert decision.passed, (
        f"argmax agrees on {decision.agreement:.2%} of {decision.samples} samples, below "
        f"{decision.min_agreement:.0%}; disagreeing samples: {decision.disagreeing_samples}"
    )


def test_stage(options, report, stage_name):
    """With preprocessing: preprocess.onnx per column, model.onnx on the reference features, and the
    merged pipeline against the two stages in sequence."""
    if options.url:
        pytest.skip("checking a live endpoint: the stages run inside the server, not here")
    stage = next(s for s in report.stages if s.stage == stage_name)
    failing = [f"column {c.input}: {explain_failure(c.comparison)}" for c in stage.columns if not c.comparison.passed]
    failing += [explain_failure(c) for c in stage.outputs if not c.passed]
    assert stage.passed, (report.diagnosis or "") + " " + " ".join(failing)
