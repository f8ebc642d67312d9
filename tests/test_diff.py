"""`bundle diff A B`: compatibility, what changed (preprocessing statistics, graphs, tolerance,
environment, provenance), and B run on A's references with flips."""

from __future__ import annotations

import importlib.util
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bundle_tools import copy_bundle, rehash
from paritybundle.bundle.manifest import TensorSpec
from paritybundle.bundle.store import read_manifest
from paritybundle.cli import main
from paritybundle.commands.diff import compatibility_of, diff, spec_differences
from paritybundle.runtime.lock import parse_lock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wine_pair(tmp_path_factory):
    """A: the wine example. B: the same model, its alcohol scaler's fitted mean shifted by 0.3
    (what a refit on other data does), exported as v2."""
    from paritybundle.training import export_spec

    spec_file = importlib.util.spec_from_file_location("wine_for_diff", ROOT / "examples" / "wine" / "train.py")
    module = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(module)
    spec = module.make_spec(epochs=60)
    folder = tmp_path_factory.mktemp("diff")
    a = export_spec(spec, folder / "a").path
    standardize = spec.preprocess.chains[0].steps[0]
    assert spec.preprocess.chains[0].name == "alcohol" and standardize.kind == "standardize"
    standardize.mean = standardize.mean + 0.3
    spec.version = "2"
    b = export_spec(spec, folder / "b").path
    return a, b


def test_a_bundle_against_itself_reproduces_and_shows_no_change(wine_pair, capsys):
    a, _ = wine_pair
    report = diff(a, a)
    assert report.passed and report.reproduces and report.compatibility.compatible
    assert report.specs == [] and report.tolerance == [] and report.environment == [] and report.provenance == []
    assert report.preprocessing.structure == [] and report.preprocessing.statistics == []
    assert [r.direction for r in report.behaviour] == ["b_on_a", "a_on_b"]
    assert main(["diff", str(a), str(a)]) == 0
    assert "OK: B reproduces A" in capsys.readouterr().out


def test_each_file_of_both_bundles_is_hashed_once(wine_pair, monkeypatch):
    # A diff of two large bundles must not hash them twice (once to verify, once more to load).
    from collections import Counter

    from paritybundle.bundle import store

    hashed = Counter()
    real = store.sha256_file

    def counting(path, **options):
        hashed[str(path)] += 1
        return real(path, **options)

    monkeypatch.setattr(store, "sha256_file", counting)
    a, b = wine_pair
    assert diff(a, b).compatibility.compatible
    listed = {str(root / rel) for root in (a, b) for rel in read_manifest(root).files}
    assert set(hashed) == listed and set(hashed.values()) == {1}


def test_a_moved_fitted_constant_is_shown_and_tied_to_the_changed_outputs(wine_pair, capsys):
    a, b = wine_pair
    report = diff(a, b)
    assert not report.passed and not report.reproduces and report.compatibility.compatible
    [moved] = report.preprocessing.statistics
    assert (moved.input, moved.kind, moved.key) == ("alcohol", "standardize", "mean")
    assert moved.max_abs_change == pytest.approx(0.3, rel=1e-5)
    assert {"what": "version", "a": "1", "b": "2"} in [c.model_dump() for c in report.provenance]
    b_on_a = report.behaviour[0]
    assert not b_on_a.passed and b_on_a.outputs[0].stats.violations > 0
    assert b_on_a.flips == b_on_a.outputs[0].decision.samples - b_on_a.outputs[0].decision.agreeing
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "mean moved by up to 0.3" in out and "DIFFERS: B does not reproduce A" in out
    assert main(["diff", str(a), str(b), "--expect-change"]) == 0
    assert "as expected (--expect-change)" in capsys.readouterr().out


def test_incompatible_specs_are_called_out_first_and_fail_even_when_change_is_expected(
    wine_pair, digits_bundle, capsys
):
    a, _ = wine_pair
    report = diff(a, digits_bundle, expect_change=True)
    assert not report.compatibility.compatible and not report.passed and report.behaviour == []
    problems = " ".join(report.compatibility.problems)
    assert "input 'pixels'" in problems and "input 'alcohol'" in problems and "output 'scores'" in problems
    assert main(["diff", str(a), str(digits_bundle), "--expect-change"]) == 1
    out = capsys.readouterr().out
    assert out.index("INCOMPATIBLE") < out.index("graphs")


def spec(name, dtype="float32", shape=("batch", 4), nonfinite=False):
    return TensorSpec(name=name, dtype=dtype, shape=list(shape), allow_nonfinite=nonfinite)


@pytest.mark.parametrize(
    "a_spec,b_spec,breaking",
    [
        (spec("x"), spec("x", shape=("n", 4)), False),  # a renamed symbolic dim
        (spec("x", shape=(8, 4)), spec("x"), False),  # B accepts any batch: fine
        (spec("x"), spec("x", shape=(8, 4)), True),  # B fixes a dim A left free
        (spec("x"), spec("x", shape=("batch", 5)), True),  # another feature count
        (spec("x"), spec("x", dtype="float64"), True),  # another dtype
        (spec("x"), spec("x", shape=("batch", 4, 1)), True),  # another rank
        (spec("x", nonfinite=True), spec("x"), True),  # NaN accepted by A, refused by B
        (spec("x"), spec("x", nonfinite=True), False),  # B accepts more
    ],
)
def test_input_compatibility_rules(digits_bundle, a_spec, b_spec, breaking):
    manifest = read_manifest(digits_bundle)
    a = manifest.model_copy(update={"inputs": [a_spec]})
    b = manifest.model_copy(update={"inputs": [b_spec]})
    found = spec_differences(a, b)
    assert compatibility_of(found, a, b).compatible is (not breaking)


def test_added_and_removed_names(digits_bundle):
    manifest = read_manifest(digits_bundle)
    a = manifest.model_copy(update={"inputs": [spec("x")], "outputs": [spec("y")]})
    more_outputs = manifest.model_copy(update={"inputs": [spec("x")], "outputs": [spec("y"), spec("z")]})
    assert compatibility_of(spec_differences(a, more_outputs), a, more_outputs).compatible
    new_input = manifest.model_copy(update={"inputs": [spec("x"), spec("w")], "outputs": [spec("y")]})
    result = compatibility_of(spec_differences(a, new_input), a, new_input)
    assert not result.compatible and "input 'w'" in result.problems[0]


def test_environment_lock_differences_are_classified(wine_pair, tmp_path):
    a, _ = wine_pair
    b = copy_bundle(a, tmp_path / "b")
    lock_path = b / "environment.lock.json"
    lock = parse_lock(lock_path.read_bytes(), source="lock")
    changed = lock.model_copy(
        update={
            "onnxruntime": lock.onnxruntime.model_copy(update={"version": "1.17.0"}),
            "python": lock.python.model_copy(update={"version": "3.12.1"}),
        }
    )
    lock_path.write_text(changed.to_json())
    rehash(b)
    report = diff(a, b)
    severities = {item.what: item.severity for item in report.environment}
    assert severities["onnxruntime"] == "critical" and severities["python"] == "critical"
    assert report.reproduces  # same graphs, same references: behaviour unchanged


def test_json_and_html_reports(wine_pair, tmp_path, capsys):
    a, b = wine_pair
    assert main(["diff", str(a), str(b), "--json", str(tmp_path / "d.json"), "--html", str(tmp_path / "d.html")]) == 1
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["schema_version"] == 1 and data["passed"] is False and data["compatibility"]["compatible"] is True
    assert {g["stage"] for g in data["graphs"]} == {"pipeline", "model", "preprocess"}
    assert data["behaviour"][0]["direction"] == "b_on_a"

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.headings, self.tags, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

        def handle_data(self, data):
            self.text.append(data)
            if self.tags and self.tags[-1] == "h2":
                self.headings.append(data)

    page = Collect()
    page.feed((tmp_path / "d.html").read_text())
    assert page.headings == [
        "Compatibility",
        "Input and output specs",
        "Preprocessing",
        "Graphs",
        "Tolerance policy",
        "Provenance",
        "How strong each verdict is",
        "Environment locks",
        "Behaviour (judged by A's tolerance)",
    ]
    assert "script" not in page.tags and any("mean moved by up to 0.3" in t for t in page.text)
    capsys.readouterr()
