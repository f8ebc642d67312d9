"""The folders are the layers, and every check runs through one comparison loop."""

from __future__ import annotations

import io
import subprocess
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest

import paritybundle
from paritybundle.check import engine

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(paritybundle.__file__).parent
# "One concept, one module, none much over 400 lines" (DESIGN.md). Counted in what a module says
# (statements, comment lines, docstring lines), not in physical lines: `ruff format` decides those, and
# wrapping one long call over five lines adds no concept. 340 of these were ~420 physical lines as the
# code was wrapped before the formatter (bundle/manifest.py: 331 then 412; 456 once formatted).
MAX_MODULE_LOGICAL_LINES = 340


def logical_lines(source: str) -> int:
    """Statements, comment lines and docstring lines: what a module says, however a formatter wraps it."""
    count = 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NEWLINE or (token.type == tokenize.COMMENT and token.line.lstrip().startswith("#")):
            count += 1
        elif token.type == tokenize.STRING:
            count += token.end[0] - token.start[0]  # the lines a docstring (or long literal) spans beyond its first
    return count


def test_import_linter_contracts_hold():
    """Layers (bundle < parity < runtime < check < reports|serving|training < commands < cli), only
    training._torch imports torch, and no cycles: the contracts in pyproject.toml."""
    # In a subprocess: import-linter configures logging with disable_existing_loggers, which would
    # silence paritybundle's loggers for every later test in this process.
    script = f"import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_no_module_is_much_over_400_lines():
    sizes = {str(p.relative_to(PACKAGE)): logical_lines(p.read_text()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LOGICAL_LINES} == {}


def test_logical_lines_ignore_wrapping_and_count_what_is_said():
    one_line = "x = call(a, b, c)  # why\n"
    wrapped = "x = call(\n    a,\n    b,\n    c,\n)  # why\n"
    assert logical_lines(one_line) == logical_lines(wrapped) == 1
    assert logical_lines('# a comment\ndef f():\n    """One.\n\n    Three."""\n    return 1\n') == 1 + 1 + 3 + 1


@pytest.fixture
def loop_calls(monkeypatch):
    """Every call of the one comparison loop, by the source and targets it joined."""
    calls = []
    real = engine.run

    def counting(source, comparisons, **options):
        calls.append((type(source).__name__, [type(getattr(c.actual, "target", None)).__name__ for c in comparisons]))
        return real(source, comparisons, **options)

    monkeypatch.setattr(engine, "run", counting)
    return calls


def test_check_and_its_stages_run_through_the_one_loop(digits_bundle, wine_bundle, loop_calls):
    assert paritybundle.check(digits_bundle)
    assert paritybundle.check(wine_bundle)
    # The pass over the references also collects the rows the single-row pass (check/rows_alone.py) runs
    # next: two comparisons of a part with itself (no target), then those rows alone, one request each, then
    # their answers judged together (a part against a part), through the same loop.
    collect = ["NoneType", "NoneType"]
    assert loop_calls[0] == ("BundleReferences", ["RunnerTarget", *collect])
    assert loop_calls[1] == ("InMemoryReferences", ["RunnerTarget"])
    assert loop_calls[2] == ("InMemoryReferences", ["NoneType"])
    # Four comparisons of a bundle with preprocessing, in the same single pass.
    assert loop_calls[3] == ("BundleReferences", ["RunnerTarget"] * 4 + collect)
    assert loop_calls[4:6] == [("InMemoryReferences", ["RunnerTarget"]), ("InMemoryReferences", ["NoneType"])]


def test_testdata_diff_and_export_run_through_the_one_loop(digits_bundle, tmp_path, loop_calls):
    from paritybundle.check.checks import check_testdata
    from paritybundle.commands.diff import diff
    from paritybundle.commands.testdata import write_testdata

    write_testdata(digits_bundle, tmp_path / "td")
    assert check_testdata(digits_bundle, tmp_path / "td")
    assert diff(digits_bundle, digits_bundle)
    assert [source for source, _ in loop_calls] == ["TestdataReferences", "BundleReferences", "BundleReferences"]
    loop_calls.clear()
    import torch

    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    paritybundle.export(torch.nn.Linear(4, 2), tmp_path / "b", reference_inputs=x, name="t")
    # The batch-independence probe (rows alone, then in reverse order), the fail-closed validation, then the
    # power measurement (its perturbed graph): the same loop each time.
    assert loop_calls[:4] == [("InMemoryReferences", ["RunnerTarget"])] * 4


def test_a_live_endpoint_is_a_target_whose_client_is_passed_in(digits_bundle, loop_calls):
    """The check layer imports no HTTP client: any object with check_model/infer_all is an endpoint."""
    from paritybundle.check.checks import check_endpoint

    runtime = paritybundle.load(digits_bundle)

    class InProcess:
        def check_model(self, name, manifest):
            self.checked = name

        def infer_all(self, name, manifest, inputs, batch):
            return runtime.predict(inputs)

    client = InProcess()
    report = check_endpoint(digits_bundle, client, url="in-process://digits", request_batch=7)
    assert report and client.checked == "digits" and report.settings.url == "in-process://digits"
    assert loop_calls == [
        ("BundleReferences", ["EndpointTarget", "NoneType", "NoneType"]),
        ("InMemoryReferences", ["EndpointTarget"]),  # the sampled rows, one request each
        ("InMemoryReferences", ["NoneType"]),
    ]  # their answers, judged together
