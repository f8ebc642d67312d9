"""Large checks and replays in shards: merged judges equal one pass, on a real local Ray too.

A check split over workers must reach the verdict, the statistics (p99 included) and the named
requests that one pass over everything reaches (the merge rule itself: test_accumulator_merge.py).
Here: shards of a capture judged apart and merged against the local check, then `--engine ray`
end to end, for checks and for replays.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require

require("pyarrow")

from scoring_tools import write_capture  # noqa: E402
from test_accumulator_merge import STAT_FIELDS, assert_same_comparison, same  # noqa: E402

from bundle_tools import copy_bundle, perturb_weights, rehash  # noqa: E402
from paritybundle.cli import main  # noqa: E402

WINE_SPEC = "examples/wine/train.py:make_spec"  # relative, as users type it: workers get the absolute path


@pytest.fixture(scope="module")
def capture(wine_bundle, tmp_path_factory):
    """Six files of wine traffic; three requests in three files answered otherwise (as another runtime would)."""
    altered = {"req-00007": 0.5, "req-00031": 2.0, "req-00052": 0.05}
    directory = write_capture(
        wine_bundle, tmp_path_factory.mktemp("capture"), files=6, requests_per_file=10, altered=altered
    )
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
    results = [
        judge_capture(read_capture(s.file, runtime.manifest), s, runtime.manifest, {}, runner=runtime.runner)
        for s in shards
    ]
    comparisons, requests, samples = merge_shards(results)
    assert samples == whole.settings.samples
    for merged, local in zip(comparisons, whole.outputs, strict=True):
        # The local check ran ONNX Runtime on all rows at once, the shards file by file.
        assert_same_comparison(merged, local, mean_rel=1e-5)
    assert not whole.passed and set(whole.failing_requests["scores"]) <= {
        f"{r}{s}" for r in altered for s in ("", "[1]", "[2]")
    }
    assert sorted(requests[s] for s in whole.outputs[0].failing_samples) == sorted(
        r for r in whole.failing_requests["scores"]
    )


def test_check_on_ray_reports_what_the_local_check_reports(ray_cluster, capture, wine_bundle, tmp_path):
    directory, _ = capture
    local, distributed = tmp_path / "local.json", tmp_path / "ray.json"
    assert main(["check", str(wine_bundle), "--references", str(directory), "--json", str(local)]) == 1
    assert (
        main(
            [
                "check",
                str(wine_bundle),
                "--references",
                str(directory),
                "--engine",
                "ray",
                "--workers",
                "2",
                "--json",
                str(distributed),
            ]
        )
        == 1
    )
    here, there = json.loads(local.read_text()), json.loads(distributed.read_text())
    assert there["settings"]["engine"] == "ray" and there["settings"]["workers"]
    assert there["failing_requests"] == here["failing_requests"] and there["passed"] is here["passed"] is False
    for merged, whole in zip(there["outputs"], here["outputs"], strict=True):
        for name in STAT_FIELDS:
            assert same(merged["stats"][name], whole["stats"][name]), name
        assert merged["failing_samples"] == whole["failing_samples"]
    assert there["settings"]["samples"] == here["settings"]["samples"]
    for name in (
        "onnxruntime_version",
        "providers",
        "graph_optimization_level",
        "intra_op_num_threads",
        "batch_size",
        "source",
        "capture",
    ):  # what the workers ran under, as the local check reports its own
        assert there["settings"][name] == here["settings"][name], name


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
    assert (
        main(
            [
                "replay",
                WINE_SPEC,
                str(directory),
                "--bundle",
                str(wine_bundle),
                "--engine",
                "ray",
                "--json",
                str(distributed),
            ]
        )
        == 1
    )
    here, there = json.loads(local.read_text()), json.loads(distributed.read_text())
    assert there["settings"]["source"] == "replay" and there["settings"]["engine"] == "ray"
    assert there["failing_requests"] == here["failing_requests"]
    for merged, whole in zip(there["outputs"], here["outputs"], strict=True):
        for name in STAT_FIELDS:
            assert same(merged["stats"][name], whole["stats"][name]), name
