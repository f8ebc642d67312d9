"""The linters and the type checker, as CI runs them: ruff (lint and format) and mypy, configured in
pyproject.toml. A finding fails the suite, so `make test` is the one command a contributor runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import installed_tool

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_is_clean(args):
    done = subprocess.run([installed_tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff {' '.join(args)}:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"


def test_mypy_is_clean():
    done = subprocess.run([installed_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"mypy:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
