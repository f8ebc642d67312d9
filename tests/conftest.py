"""Shared fixtures: one real digits bundle per session, exported through the public API."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

# `make mutation` runs the tests once per mutant: exporting the example bundles each time would cost
# most of the run. It exports them once (scripts/fixture_bundles.py) and points here; each session
# then starts from a copy. The bundles are data: made by the unmutated code, used by the mutated.
PREBUILT = os.environ.get("PARITYBUNDLE_TEST_BUNDLES")


# In CI (.ci/run sets it) a test that cannot get what it needs from the machine fails instead of
# skipping: a skipped container or browser test must be a decision, not something that went unnoticed.
STRICT_CI = os.environ.get("PARITYBUNDLE_CI_STRICT") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason`` here; fail with it in CI."""
    if STRICT_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason, allow_module_level=True)


def require(module: str, reason: str | None = None) -> Any:
    """``pytest.importorskip`` that fails in CI: every optional library the tests use is in the dev extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        skip_or_fail(reason or f"{module} is not installed")


def installed_tool(name: str) -> str:
    """The path of a command-line tool from the dev extra (ruff, mypy, mkdocs): beside this interpreter, else on
    PATH. A missing one fails the test: the dev extra installs every one of them."""
    import shutil

    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it is in the dev extra (pip install -e '.[dev]').")
    return found


def _prebuilt(name: str, tmp_path_factory) -> Path | None:
    if not PREBUILT:
        return None
    import shutil

    return Path(shutil.copytree(Path(PREBUILT) / name, tmp_path_factory.mktemp("bundles") / name))


def _load_example(name: str = "digits"):
    spec = importlib.util.spec_from_file_location(f"{name}_example", ROOT / "examples" / name / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def digits_example():
    return _load_example()


@pytest.fixture(scope="session")
def wine_bundle(tmp_path_factory) -> Path:
    """The tabular example (raw columns, NaN, a category) exported through its own spec."""
    from paritybundle.training import export_spec

    return (
        _prebuilt("wine", tmp_path_factory)
        or export_spec(_load_example("wine").make_spec(), tmp_path_factory.mktemp("bundles") / "wine").path
    )


@pytest.fixture(scope="session")
def image_bundle(tmp_path_factory) -> Path:
    """The image example (uint8 RGB through the image steps), trained briefly."""
    from paritybundle.training import export_spec

    prebuilt = _prebuilt("digit-images", tmp_path_factory)
    if prebuilt:
        return prebuilt
    spec = _load_example("digit_images").make_spec(epochs=3)
    return export_spec(spec, tmp_path_factory.mktemp("bundles") / "digit-images").path


@pytest.fixture(scope="session")
def digits_spec(digits_example):
    # Two epochs: accuracy does not matter here, a trained-looking model does.
    return digits_example.make_spec(epochs=2)


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory, request) -> Path:
    from paritybundle.training import export_spec

    prebuilt = _prebuilt("digits", tmp_path_factory)
    if prebuilt:
        return prebuilt
    return export_spec(request.getfixturevalue("digits_spec"), tmp_path_factory.mktemp("bundles") / "digits").path


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray for the tests of `--engine ray` (started once: it takes seconds)."""
    ray = require("ray", "Ray Data is in the dev extra")
    require("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def bundle_copy(digits_bundle, tmp_path) -> Path:
    """A private copy of the digits bundle that a test may tamper with."""
    from bundle_tools import copy_bundle

    return copy_bundle(digits_bundle, tmp_path / "digits")


def pytest_terminal_summary(terminalreporter):
    from bundle_tools import HOSTILE_COUNTS

    if HOSTILE_COUNTS:
        terminalreporter.section("hostile-input and crash-safety cases run")
        for name, count in sorted(HOSTILE_COUNTS.items()):
            terminalreporter.write_line(f"{name}: {count}")
