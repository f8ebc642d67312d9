"""Large checks and replays in shards: merged judges equal one pass, on a real local Ray too.

The merge is the point: a check split over workers must reach the verdict, the statistics (p99
included) and the named requests that one pass over everything reaches. First the merge rule
itself (hypothesis, both the keep-everything and the keep-the-top-1% regimes), then shards of a
capture judged apart and merged against the local check, then `--engine ray` end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require

require("pyarrow")

from bundle_tools import copy_bundle, perturb_weights, rehash  # noqa: E402
from scoring_tools import write_capture  # noqa: E402

from paritybundle.bundle.manifest import Tolerance  # noqa: E402
from paritybundle.cli import main  # noqa: E402
from paritybundle.parity import accumulator as accumulator_module  # noqa: E402
from paritybundle.parity.accumulator import OutputAccumulator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WINE_SPEC = f"{ROOT}/examples/wine/train.py:make_spec"
STAT_FIELDS = ("elements", "max_abs", "p99_abs", "max_rel", "p99_rel", "violations", "nonfinite_mismatches",
               "worst_sample", "worst_index", "worst_serve", "worst_research", "required_atol", "max_tolerance_ratio")


def assert_same_comparison(merged, whole, mean_rel: float = 1e-12) -> None:
    """Equal in everything but the means, whose float sums may round differently in another order
    (and, where ONNX Runtime ran batches of another size, over float32 results an ulp apart)."""
    assert merged.passed == whole.passed and merged.problem == whole.problem
    assert merged.failing_samples == whole.failing_samples and merged.failing_sample_count == whole.failing_sample_count
    assert merged.decision == whole.decision and merged.histogram == whole.histogram
    if whole.stats is None:
        assert merged.stats is None
        return
    for name in STAT_FIELDS:
        assert same(getattr(merged.stats, name), getattr(whole.stats, name)), name
    assert merged.stats.mean_abs == pytest.approx(whole.stats.mean_abs, rel=mean_rel, abs=1e-300)
    assert merged.stats.mean_rel == pytest.approx(whole.stats.mean_rel, rel=mean_rel, abs=1e-300)


def same(a, b) -> bool:
    """Equal, NaN counting as equal to NaN (a worst element may be a served NaN)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def judge(total: int, scores: bool) -> OutputAccumulator:
    return OutputAccumulator("y", Tolerance(atol=1e-3, rtol=1e-3), total, scores=scores, histogram=True,
                             min_decision_agreement=0.9)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 120), width=st.integers(1, 5), cuts=st.lists(st.integers(0, 120), max_size=5),
       noise=st.sampled_from([0.0, 1e-5, 1e-2, 1.0]), keep_all=st.booleans(), scores=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_shards_merged_equal_one_pass(rows, width, cuts, noise, keep_all, scores, seed):
    rng = np.random.default_rng(seed)
    research = rng.normal(size=(rows, width)).astype(np.float32)
    serve = research + rng.normal(scale=noise, size=research.shape).astype(np.float32) * (rng.random((rows, 1)) < 0.3)
    if rows > 3:
        serve[rows // 2, 0] = np.nan  # a NaN mismatch: an infinite error, counted apart
    previous = accumulator_module.KEEP_ALL_ELEMENTS
    accumulator_module.KEEP_ALL_ELEMENTS = 10 ** 9 if keep_all else 8  # the top-1% regime on small sets too
    try:
        whole = judge(serve.size, scores)
        for first in range(0, rows, 7):
            whole.add(serve[first:first + 7], research[first:first + 7], first)
        bounds = sorted({0, rows, *[c for c in cuts if c < rows]})
        shards = []
        for start, end in zip(bounds, bounds[1:]):
            shard = judge(serve.size, scores)  # sized by the whole set, numbered in it
            for first in range(start, end, 7):
                shard.add(serve[first:min(first + 7, end)], research[first:min(first + 7, end)], first)
            shards.append(shard)
        merged = shards[0]
        for shard in shards[1:]:
            merged.merge(shard)
        assert_same_comparison(merged.finish(), whole.finish())
    finally:
        accumulator_module.KEEP_ALL_ELEMENTS = previous


def test_a_shard_judged_for_another_set_is_refused():
    a, b = judge(10, False), judge(20, False)
    with pytest.raises(ValueError, match="shards must be judged as parts of one set"):
        a.merge(b)


@pytest.fixture(scope="module")
def capture(wine_bundle, tmp_path_factory):
    """Six files of wine traffic; three requests in three files answered otherwise (as another runtime would)."""
    altered = {"req-00007": 0.5, "req-00031": 2.0, "req-00052": 0.05}
    directory = write_capture(wine_bundle, tmp_path_factory.mktemp("capture"), files=6, requests_per_file=10,
                              altered=altered)
    return directory, altered


def test_capture_shards_judged_apart_and_merged_equal_the_local_check(capture, wine_bundle):
    from paritybundle.check.sharded import judge_capture, merge_shards, plan_shards
    from paritybundle.check.traffic import check_capture
    from paritybundle.runtime.capture import read_capture
    from paritybundle.runtime.load import load

    directory, altered = capture
    whole = check_capture(wine_bundle, directory)
    runtime = load(wine_bundle)
    shards = plan_shards(directory, runtime.manifest)
    assert [s.first for s in shards] == list(np.cumsum([0] + [s.samples for s in shards[:-1]]))
    results = [judge_capture(read_capture(s.file, runtime.manifest), s, runtime.manifest, {}, runner=runtime.runner)
               for s in shards]
    comparisons, requests, samples = merge_shards(results)
    assert samples == whole.settings.samples
    for merged, local in zip(comparisons, whole.outputs):
        # The local check ran ONNX Runtime on all rows at once, the shards file by file.
        assert_same_comparison(merged, local, mean_rel=1e-5)
    assert not whole.passed and set(whole.failing_requests["scores"]) <= {f"{r}{s}" for r in altered for s in ("", "[1]", "[2]")}
    assert sorted(requests[s] for s in whole.outputs[0].failing_samples) == sorted(
        r for r in whole.failing_requests["scores"])


def test_check_on_ray_reports_what_the_local_check_reports(ray_cluster, capture, wine_bundle, tmp_path):
    directory, _ = capture
    local, distributed = tmp_path / "local.json", tmp_path / "ray.json"
    assert main(["check", str(wine_bundle), "--references", str(directory), "--json", str(local)]) == 1
    assert main(["check", str(wine_bundle), "--references", str(directory), "--engine", "ray", "--workers", "2",
                 "--json", str(distributed)]) == 1
    here, there = json.loads(local.read_text()), json.loads(distributed.read_text())
    assert there["settings"]["engine"] == "ray" and there["settings"]["workers"]
    assert there["failing_requests"] == here["failing_requests"] and there["passed"] is here["passed"] is False
    for merged, whole in zip(there["outputs"], here["outputs"]):
        for name in STAT_FIELDS:
            assert same(merged["stats"][name], whole["stats"][name]), name
        assert merged["failing_samples"] == whole["failing_samples"]
    assert there["settings"]["samples"] == here["settings"]["samples"]


def test_check_on_ray_keeps_a_workers_gate_refusal(ray_cluster, capture, wine_bundle, tmp_path, capsys):
    directory, _ = capture
    bundle = copy_bundle(wine_bundle, tmp_path / "perturbed")
    perturb_weights(bundle, 0.2)
    rehash(bundle)
    code = main(["check", str(bundle), "--references", str(directory), "--engine", "ray"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "refused to score" in err and "reference check fails on this worker's runtime" in err


def test_engine_ray_is_for_captures(wine_bundle, tmp_path, capsys):
    assert main(["check", str(wine_bundle), "--engine", "ray"]) == 2
    assert "pass --references CAPTURE" in capsys.readouterr().err
    assert main(["check", str(wine_bundle), "--engine", "dask", "--references", str(tmp_path)]) == 2


def test_replay_on_ray_equals_the_local_replay(ray_cluster, capture, wine_bundle, tmp_path):
    directory, _ = capture
    local, distributed = tmp_path / "local.json", tmp_path / "ray.json"
    assert main(["replay", WINE_SPEC, str(directory), "--bundle", str(wine_bundle), "--json", str(local)]) == 1
    assert main(["replay", WINE_SPEC, str(directory), "--bundle", str(wine_bundle), "--engine", "ray",
                 "--json", str(distributed)]) == 1
    here, there = json.loads(local.read_text()), json.loads(distributed.read_text())
    assert there["settings"]["source"] == "replay" and there["settings"]["engine"] == "ray"
    assert there["failing_requests"] == here["failing_requests"]
    for merged, whole in zip(there["outputs"], here["outputs"]):
        for name in STAT_FIELDS:
            assert same(merged["stats"][name], whole["stats"][name]), name
