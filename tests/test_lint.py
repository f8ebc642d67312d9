"""The linters and the type checker, as CI runs them: ruff (lint and format) and mypy, configured in
pyproject.toml. A finding fails the suite, so `make test` is the one command a contributor runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it is in the dev extra (pip install -e '.[dev]').")
    return str(found)


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_is_clean(args):
    done = subprocess.run([_tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff {' '.join(args)}:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"


def test_mypy_is_clean():
    done = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"mypy:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
