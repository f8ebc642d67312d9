"""Shared fixtures: one real digits bundle per session, exported through the public API."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load_example(name: str = "digits"):
    spec = importlib.util.spec_from_file_location(f"{name}_example", ROOT / "examples" / name / "train.py")
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

    return export_spec(_load_example("wine").make_spec(), tmp_path_factory.mktemp("bundles") / "wine").path


@pytest.fixture(scope="session")
def image_bundle(tmp_path_factory) -> Path:
    """The image example (uint8 RGB through the image steps), trained briefly."""
    from paritybundle.training import export_spec

    spec = _load_example("digit_images").make_spec(epochs=3)
    return export_spec(spec, tmp_path_factory.mktemp("bundles") / "digit-images").path


@pytest.fixture(scope="session")
def digits_spec(digits_example):
    # Two epochs: accuracy does not matter here, a trained-looking model does.
    return digits_example.make_spec(epochs=2)


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory, digits_spec) -> Path:
    from paritybundle.training import export_spec

    return export_spec(digits_spec, tmp_path_factory.mktemp("bundles") / "digits").path


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
