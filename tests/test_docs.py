"""The documentation site builds without a warning (broken links, docstrings mkdocstrings cannot read),
the README stays a one-screen entry point, and the getting-started snippets run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import installed_tool

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_mkdocs_build_is_strict_and_clean(tmp_path):
    done = subprocess.run(
        [installed_tool("mkdocs"), "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    # mkdocstrings rendered the docstrings, not just the headings: ExportSpec's fields are there.
    assert "reference_inputs" in api and "max_reference_samples" in api
    assert "Threat model" in (tmp_path / "site" / "security" / "index.html").read_text(), "SECURITY.md included"


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert {p for p in pages if p not in nav} == set()


def test_the_readme_is_short_and_points_to_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme and "mkdocs serve" in readme


def _snippets() -> list[str]:
    text = (ROOT / "README.md").read_text() + (DOCS / "getting-started.md").read_text()
    return [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "import paritybundle" in block]


@pytest.mark.parametrize("snippet", _snippets(), ids=["readme", "torch", "scikit-learn", "hugging-face"])
def test_readme_and_getting_started_snippets_run_as_written(snippet, tmp_path):
    (tmp_path / "artifacts").mkdir()
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    bundles = [p for p in (tmp_path / "artifacts").iterdir() if (p / "bundle.json").is_file()]
    assert len(bundles) == 1, "each snippet writes one bundle (and its check passed: it asserts so)"


def test_the_version_lives_in_one_place_and_the_changelog_names_it():
    from importlib import metadata

    from paritybundle.version import __version__

    project = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]
    assert 'dynamic = ["version"]' in project and "\nversion =" not in project
    assert metadata.version("paritybundle") == __version__, "the installed metadata reads version.py"
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()
