"""Options and shared fixtures of the deployment pipeline's parity suite.

    pytest parity_tests --bundle PATH [--url URL] [--key PUBLIC.pem] [--junitxml report.xml]

Each check is its own test, so ``--junitxml`` gives a CI system one result per check.
The check itself runs once per session; the tests read its report.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("paritybundle")
    group.addoption("--bundle", help="The bundle (directory or .tar.gz) to check. Required.")
    group.addoption("--url", default=None, help="Check this live V2 endpoint instead of local ONNX Runtime.")
    group.addoption("--model", default=None, help="With --url: the model name on the server (default: the bundle's).")
    group.addoption(
        "--key",
        default=os.environ.get("PARITYBUNDLE_PUBLIC_KEY"),
        help="Public key the bundle's signature must verify with (default: $PARITYBUNDLE_PUBLIC_KEY).",
    )
    group.addoption(
        "--env-policy",
        default="strict",
        choices=("strict", "warn", "ignore"),
        help="Drift policy for a local check (default: strict).",
    )


def _manifest(config):
    from paritybundle.bundle.store import read_manifest

    path = config.getoption("--bundle")
    if not path:
        raise pytest.UsageError("parity_tests needs --bundle PATH (the bundle to check).")
    return read_manifest(path)


def pytest_generate_tests(metafunc):
    # One test per output (and per score output for decisions, per stage), named after it.
    if {"output_name", "score_output", "stage_name"} & set(metafunc.fixturenames):
        manifest = _manifest(metafunc.config)
        if "output_name" in metafunc.fixturenames:
            metafunc.parametrize("output_name", [o.name for o in manifest.outputs])
        if "score_output" in metafunc.fixturenames:
            metafunc.parametrize(
                "score_output",
                [o.name for o in manifest.outputs if o.kind == "scores"]
                or [pytest.param(None, marks=pytest.mark.skip(reason="no output is of kind 'scores'"))],
            )
        if "stage_name" in metafunc.fixturenames:
            stages = ["preprocess", "model", "merge"] if manifest.preprocessing is not None else []
            metafunc.parametrize(
                "stage_name",
                stages
                or [
                    pytest.param(
                        None,
                        marks=pytest.mark.skip(
                            reason="the bundle has no preprocessing, so pipeline.onnx is the model: no stages to check apart"
                        ),
                    )
                ],
            )


@pytest.fixture(scope="session")
def options(pytestconfig):
    _manifest(pytestconfig)  # fails early, with the usage sentence, when --bundle is missing
    return pytestconfig.option


@pytest.fixture(scope="session")
def verified(options):
    """The bundle after integrity (and signature, with a key). The integrity and signature tests
    report a failure; everything else is skipped, since nothing in such a bundle may be used."""
    from paritybundle.bundle.store import open_bundle
    from paritybundle.errors import ParityBundleError

    try:
        return open_bundle(options.bundle, options.key)
    except ParityBundleError as exc:
        pytest.skip(f"not checked: the bundle failed integrity or its signature ({exc})")


@pytest.fixture(scope="session")
def report(options, verified):
    """The parity check, run once: locally (ONNX Runtime) or against --url."""
    from paritybundle.check.checks import check
    from paritybundle.commands.endpoint import check_url
    from paritybundle.errors import ParityBundleError

    try:
        if options.url:
            return check_url(options.bundle, options.url, model=options.model, public_key=options.key)
        return check(options.bundle, env_policy="ignore", public_key=options.key)  # the policy is its own test
    except ParityBundleError as exc:
        pytest.fail(f"the check could not run: {exc}", pytrace=False)
