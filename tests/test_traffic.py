"""Parity on production traffic: a real `bundle serve --capture`, then check, replay and drift on it.

The wine example (raw columns, NaN, a category) is served; a few hundred requests drawn from its
reference rows go through, some carrying a category the reference set never ran ('violet') and
some a proline value far past its range. Then the capture must hold every request, this runtime
and the research model (rebuilt from the export spec) must reproduce what production served, a
research model whose weights moved must fail naming the requests, and drift must name exactly
the two columns.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from serving_tools import free_port, http, running_server, wait_gone

pa = require("pyarrow", reason="pyarrow is the capture extra: pip install -e '.[dev]'")
import pyarrow.parquet as pq  # noqa: E402

from paritybundle.bundle.store import read_manifest  # noqa: E402
from paritybundle.cli import main  # noqa: E402
from paritybundle.runtime.capture import FILE_GLOB, PARTIAL_SUFFIX  # noqa: E402

WINE_SPEC = "examples/wine/train.py:make_spec"
REQUESTS = 240


def _reference_rows(bundle):
    return dict(np.load(bundle / "reference" / "inputs.npz", allow_pickle=False))


def _request(manifest, rows: dict, picks: list[int], request_id: str, *, unseen=False, huge=False) -> str:
    inputs = []
    for spec in manifest.inputs:
        values = rows[spec.name][picks]
        data: list[str] | list[float]
        if spec.dtype == "string":
            data = ["violet" if unseen else str(v) for v in values]
            datatype = "BYTES"
        else:
            data = [float(v) for v in values]
            if huge and spec.name == "proline":
                data = [250000.0 for _ in data]
            datatype = "FP32"
        inputs.append({"name": spec.name, "shape": [len(picks)], "datatype": datatype, "data": data})
    # json.dumps writes NaN as a NaN token, which the server reads (the stdlib fallback).
    return json.dumps({"id": request_id, "inputs": inputs})


@pytest.fixture(scope="module")
def traffic(wine_bundle, tmp_path_factory):
    """Serve with --capture, send REQUESTS requests, stop the server gracefully: the capture and what was sent."""
    manifest = read_manifest(wine_bundle)
    rows = _reference_rows(wine_bundle)
    total = len(rows[manifest.inputs[0].name])
    directory = tmp_path_factory.mktemp("capture")
    rng = np.random.default_rng(7)
    sent, unseen_ids, huge_ids = {}, set(), set()
    workdir = tmp_path_factory.mktemp("serve")
    with running_server(wine_bundle, workdir, "--capture", str(directory), "--capture-rotate-seconds", "1") as server:
        for k in range(REQUESTS):
            picks = rng.integers(0, total, size=int(rng.integers(1, 4))).tolist()
            unseen, huge = k % 8 == 3, k % 8 == 5
            request_id = f"req-{k:04d}"
            status, answer = http(
                "POST",
                f"{server.url}/v2/models/{manifest.name}/infer",
                _request(manifest, rows, picks, request_id, unseen=unseen, huge=huge),
            )
            assert status == 200, answer
            sent[request_id] = len(picks)
            (unseen_ids if unseen else huge_ids if huge else set()).add(request_id)
        status, metrics = http("GET", f"{server.url}/metrics")
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
    return {
        "dir": directory,
        "sent": sent,
        "unseen": unseen_ids,
        "huge": huge_ids,
        "manifest": manifest,
        "metrics": metrics,
    }


def test_the_capture_holds_every_request_in_whole_parquet_files(traffic):
    files = sorted(traffic["dir"].glob(FILE_GLOB))
    assert files and not list(traffic["dir"].glob(f".*{PARTIAL_SUFFIX}"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    counted = {}
    for request_id in table["request_id"].to_pylist():
        counted[request_id] = counted.get(request_id, 0) + 1
    assert counted == traffic["sent"]  # every request, one row per sample
    assert set(table["bundle"].to_pylist()) == {traffic["manifest"].name}
    colours = table["input.color_band"].to_pylist()
    ids = table["request_id"].to_pylist()
    assert all(c == ["violet"] for c, i in zip(colours, ids, strict=True) if i in traffic["unseen"])
    scores = np.array(table["output.scores"].to_pylist())
    assert scores.shape == (sum(traffic["sent"].values()), 3) and np.isfinite(scores).all()
    # pandas reads it as it is (the interchange format, no paritybundle needed).
    frame = pq.read_table(files[0]).to_pandas()
    assert {"request_id", "row", "received_at", "input.proline", "output.scores"} <= set(frame.columns)


def test_this_runtime_reproduces_what_production_served(traffic, wine_bundle, tmp_path, capsys):
    report_path = tmp_path / "capture-check.json"
    code = main(["check", str(wine_bundle), "--references", str(traffic["dir"]), "--json", str(report_path)])
    assert code == 0, capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["settings"]["source"] == "capture"
    assert report["settings"]["samples"] == sum(traffic["sent"].values())


def test_replay_of_the_export_spec_passes(traffic, wine_bundle, tmp_path, capsys):
    junit = tmp_path / "replay.xml"
    code = main(["replay", WINE_SPEC, str(traffic["dir"]), "--bundle", str(wine_bundle), "--junit", str(junit)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "the research model, replayed, against what production served" in out
    assert 'failures="0"' in junit.read_text()


def test_a_research_model_whose_weights_moved_fails_naming_the_requests(traffic, wine_bundle):
    import torch

    from paritybundle.training.replay import replay
    from paritybundle.training.spec import load_spec

    spec = load_spec(WINE_SPEC)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in spec.model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05 * parameter.std())
    report = replay(spec, traffic["dir"], bundle=wine_bundle)
    assert not report.passed and report.failed_outputs == ["scores"]
    named = report.failing_requests["scores"]
    assert named and {n.split("[")[0] for n in named} <= set(traffic["sent"])


def test_replay_without_a_bundle_judges_under_the_recorded_manifest(traffic):
    from paritybundle.training.replay import replay

    report = replay(WINE_SPEC, traffic["dir"])
    assert report.passed and report.bundle.files_verified == 0
    assert any("recorded in the capture" in notice for notice in report.notices)


def test_drift_names_the_unseen_category_and_the_out_of_range_column(traffic, wine_bundle, tmp_path, capsys):
    html = tmp_path / "drift.html"
    json_path = tmp_path / "drift.json"
    code = main(["drift", str(wine_bundle), str(traffic["dir"]), "--json", str(json_path), "--html", str(html)])
    assert code == 1
    report = json.loads(json_path.read_text())
    drifted = {c["column"]: c for c in report["columns"] if c["findings"]}
    assert set(drifted) == {"color_band", "proline"}, report["summary"]
    colour = drifted["color_band"]
    assert colour["top_unseen"] == {"violet": sum(traffic["sent"][i] for i in traffic["unseen"])}
    assert math.isclose(colour["unseen_share"], colour["top_unseen"]["violet"] / report["samples"])
    assert drifted["proline"]["outside_reference_range"] > 0.05
    assert "categories of 'color_band' the reference set never ran ('violet')" in report["summary"]
    page = html.read_text()
    assert page.count("<svg") == len(report["columns"]) + len(report["outputs"]) and "color_band" in page
    assert "the reference set no longer proves" in capsys.readouterr().out


def test_drift_passes_on_traffic_like_the_reference_set(wine_bundle, tmp_path):
    from paritybundle.check.input_drift import input_drift
    from paritybundle.runtime.capture import Captured, chunk_batch, chunk_of, schema

    manifest = read_manifest(wine_bundle)
    rows = _reference_rows(wine_bundle)
    raw = (wine_bundle / "bundle.json").read_bytes()
    total = len(rows[manifest.inputs[0].name])
    picks = np.random.default_rng(1).integers(0, total, size=2000)
    inputs = {name: values[picks] for name, values in rows.items()}
    outputs = dict(np.load(wine_bundle / "reference" / "outputs.npz"))
    served = {name: values[picks] for name, values in outputs.items()}
    arrow_schema = schema(manifest, raw)
    batch = chunk_batch(
        chunk_of([Captured("r", time.time(), inputs, served)], manifest), manifest, "digest", arrow_schema
    )
    with pq.ParquetWriter(tmp_path / "capture-1.parquet", arrow_schema) as writer:
        writer.write_batch(batch)
    report = input_drift(wine_bundle, tmp_path)
    assert report.passed, report.summary
    assert all(c.psi is not None and c.psi < 0.1 for c in report.columns)


def test_a_tampered_capture_fails_the_runtime_check_naming_its_requests(traffic, wine_bundle, tmp_path):
    from paritybundle.check.traffic import check_capture

    table = pa.concat_tables([pq.read_table(f) for f in sorted(traffic["dir"].glob(FILE_GLOB))])
    scores = table["output.scores"].to_pylist()
    scores[5] = [s + 1.0 for s in scores[5]]
    index = table.schema.get_field_index("output.scores")
    table = table.set_column(index, table.schema.field(index), pa.array(scores, table.schema.field(index).type))
    pq.write_table(table, tmp_path / "capture-tampered.parquet")
    report = check_capture(wine_bundle, tmp_path)
    assert not report.passed
    request_id, row = table["request_id"][5].as_py(), table["row"][5].as_py()
    assert report.failing_requests["scores"] == [request_id + (f"[{row}]" if row else "")]


# --- the writer: dropped, never blocking; killed, never half-written ---------------------------------------


def _writer(wine_bundle, directory, **options):
    from prometheus_client import CollectorRegistry

    from paritybundle.serving.capture import CaptureOptions, CaptureWriter, prepare_directory

    capture = CaptureOptions(directory=str(directory), **options)
    prepare_directory(capture)
    registry = CollectorRegistry()
    return CaptureWriter(
        capture, read_manifest(wine_bundle), (wine_bundle / "bundle.json").read_bytes(), registry
    ), registry


def _one_request(wine_bundle):
    rows = _reference_rows(wine_bundle)
    inputs = {name: values[:2] for name, values in rows.items()}
    outputs = {name: values[:2] for name, values in dict(np.load(wine_bundle / "reference" / "outputs.npz")).items()}
    return inputs, outputs


def test_a_full_queue_drops_and_counts_without_blocking(wine_bundle, tmp_path):
    writer, registry = _writer(wine_bundle, tmp_path, queue_requests=10)
    inputs, outputs = _one_request(wine_bundle)
    writer.start()
    os.kill(writer._process.pid, signal.SIGSTOP)  # a writer that cannot keep up: its pipe fills
    try:
        began = time.perf_counter()
        for k in range(20000):  # ~10 MB of frames against a 1 MiB pipe and a queue of 10
            writer.submit(f"r{k}", time.time(), inputs, outputs)
        assert time.perf_counter() - began < 5  # never waited on the pipe
        dropped = registry.get_sample_value("paritybundle_capture_dropped_total", {"reason": "queue_full"})
        assert dropped > 0
    finally:
        os.kill(writer._process.pid, signal.SIGCONT)
    writer.stop()
    captured = registry.get_sample_value("paritybundle_captured_requests_total")
    assert captured + dropped == 20000  # every request is either in a file or counted as dropped
    table = pa.concat_tables([pq.read_table(f) for f in tmp_path.glob(FILE_GLOB)])
    assert len(set(table["request_id"].to_pylist())) == captured


def test_a_failing_disk_drops_and_counts_and_serving_goes_on(wine_bundle, tmp_path):
    import shutil

    directory = tmp_path / "capture"
    writer, registry = _writer(wine_bundle, directory)
    inputs, outputs = _one_request(wine_bundle)
    writer.start()
    shutil.rmtree(directory)  # the disk gives way under the writer: its file cannot be created
    began = time.perf_counter()
    writer.submit("r0", time.time(), inputs, outputs)
    assert time.perf_counter() - began < 0.1
    writer.stop()
    assert registry.get_sample_value("paritybundle_capture_dropped_total", {"reason": "write_error"}) == 1
    assert registry.get_sample_value("paritybundle_captured_requests_total") == 0
    assert not directory.exists()


def test_a_sampled_share_is_captured(wine_bundle, tmp_path):
    writer, registry = _writer(wine_bundle, tmp_path, rate=0.5)
    inputs, outputs = _one_request(wine_bundle)
    writer.start()
    for k in range(400):
        writer.submit(f"r{k}", time.time(), inputs, outputs)
    writer.stop()
    captured = registry.get_sample_value("paritybundle_captured_requests_total")
    assert 120 <= captured <= 280  # binomial(400, 0.5): more than 8 standard deviations of room


def test_sigkill_leaves_only_whole_files_and_the_next_start_clears_the_partial_one(wine_bundle, tmp_path):
    manifest = read_manifest(wine_bundle)
    rows = _reference_rows(wine_bundle)
    directory = tmp_path / "capture"
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "paritybundle.cli",
                "serve",
                str(wine_bundle),
                "--port",
                str(port),
                "--capture",
                str(directory),
                "--capture-rotate-seconds",
                "0.3",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if http("GET", url + "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(log.read_text())
        k = 0
        until = time.monotonic() + 2.5  # files rotate every 0.3 s: some complete, one being written
        while time.monotonic() < until:
            assert (
                http("POST", f"{url}/v2/models/{manifest.name}/infer", _request(manifest, rows, [k % 5], f"k{k}"))[0]
                == 200
            )
            k += 1
        writer = int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0])
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        wait_gone(writer)  # the writer sees its input end and completes its file, then exits
    finally:
        if process.poll() is None:
            process.kill()
    files = sorted(directory.glob(FILE_GLOB))
    assert files, log.read_text()
    for file in files:  # every complete file reads in full
        assert pq.read_table(file).num_rows > 0
    from paritybundle.serving.capture import CaptureOptions, prepare_directory

    prepare_directory(CaptureOptions(directory=str(directory)))  # what the next server does first
    assert not list(directory.glob(f".*{PARTIAL_SUFFIX}"))


def test_an_unwritable_capture_directory_is_refused_before_serving(wine_bundle, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["serve", str(wine_bundle), "--port", str(free_port()), "--capture", str(blocker / "sub")]) == 2
    assert f"cannot write captured traffic to {blocker / 'sub'}" in capsys.readouterr().err
    assert (
        main(["serve", str(wine_bundle), "--port", str(free_port()), "--capture", str(tmp_path), "--capture-rate", "0"])
        == 2
    )


def test_the_next_bundle_draws_its_references_from_production_and_then_covers_it(traffic, tmp_path, capsys):
    out = tmp_path / "wine-next"
    assert main(["export", WINE_SPEC, "-o", str(out), "--references-from", str(traffic["dir"])]) == 0
    references = dict(np.load(out / "reference" / "inputs.npz", allow_pickle=False))
    assert "violet" in set(references["color_band"].tolist())  # the category production sent is now proven
    assert (references["proline"] == 250000.0).any()
    assert main(["check", str(out)]) == 0
    capsys.readouterr()
    json_path = tmp_path / "drift.json"
    main(["drift", str(out), str(traffic["dir"]), "--json", str(json_path)])
    columns = {c["column"]: c for c in json.loads(json_path.read_text())["columns"]}
    assert columns["color_band"]["unseen_share"] == 0 and not columns["proline"]["findings"]
    # The reference set now runs 'violet', but the model was never fitted on it: that is still said.
    assert columns["color_band"]["findings"] == [
        f"{columns['color_band']['unfitted_share']:.0%} of 'color_band' is outside the vocabulary its preprocessing "
        "was fitted on"
    ]


def _altered(traffic, tmp_path, change):
    """The fixture's capture, one file, with ``change(table) -> table`` applied."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted(traffic["dir"].glob(FILE_GLOB))])
    folder = tmp_path / "altered"
    folder.mkdir()
    pq.write_table(change(table), folder / "capture-1.parquet")
    return folder


def _replace(table, name, values, arrow_type=None):
    index = table.schema.get_field_index(name)
    field = table.schema.field(index) if arrow_type is None else pa.field(name, arrow_type)
    return table.set_column(index, field, pa.array(values, field.type))


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: _replace(t, "output.scores.shape", [[4]] * t.num_rows),
            "a capture file's column 'scores' holds a sample of 3 values where its shape [4] says 4; the file was altered.",
        ),
        (
            lambda t: _replace(t, "input.alcohol", [[1.0, 2.0]] * t.num_rows),
            "a capture file's column 'alcohol' holds a sample of 2 values where its shape [] says 1; the file was altered.",
        ),
        (
            lambda t: _replace(t, "output.scores.shape", [[-3]] * t.num_rows),
            "a capture file records a dimension outside 0..1099511627776; it was altered.",
        ),
        (
            lambda t: _replace(t, "input.alcohol", [["x"]] * t.num_rows, pa.list_(pa.string())),
            "holds 'input.alcohol' as lists of string, not of float",
        ),
        (lambda t: t.drop_columns(["input.color_band"]), "has no column 'input.color_band'"),
    ],
)
def test_an_altered_capture_is_one_sentence_and_exit_2(traffic, wine_bundle, tmp_path, capsys, change, message):
    folder = _altered(traffic, tmp_path, change)
    for command in (["check", str(wine_bundle), "--references", str(folder)], ["drift", str(wine_bundle), str(folder)]):
        assert main(command) == 2
        assert message in capsys.readouterr().err.replace("\n", " ").replace("  ", " ")


def test_requests_of_several_sequence_lengths_come_back_in_one_group_per_shape(wine_bundle, tmp_path):
    """A model with a dynamic axis (tokens, time steps): rows of each length are stacked together, each
    keeps its request id and arrival position, strings included."""
    from paritybundle.bundle.manifest import TensorSpec
    from paritybundle.runtime.capture import Captured, chunk_batch, chunk_of, read_capture, schema

    manifest = read_manifest(wine_bundle).model_copy(
        update={
            "inputs": [
                TensorSpec(name="tokens", dtype="int64", shape=["batch", "seq"]),
                TensorSpec(name="lang", dtype="string", shape=["batch"]),
            ],
            "outputs": [TensorSpec(name="logits", dtype="float32", shape=["batch", "seq", 3])],
        }
    )
    requests = []
    for k, (rows, seq) in enumerate([(2, 4), (1, 7), (3, 4), (1, 7)]):
        tokens = np.arange(rows * seq, dtype=np.int64).reshape(rows, seq) + 100 * k
        logits = np.full((rows, seq, 3), float(k), np.float32)
        requests.append(
            Captured(
                f"r{k}",
                1.7e9 + k,
                {"tokens": tokens, "lang": np.array([f"l{k}"] * rows, dtype=object)},
                {"logits": logits},
            )
        )
    arrow_schema = schema(manifest, b"{}")
    with pq.ParquetWriter(tmp_path / "capture-1.parquet", arrow_schema) as writer:
        writer.write_batch(chunk_batch(chunk_of(requests[:2], manifest), manifest, "d", arrow_schema))
        writer.write_batch(chunk_batch(chunk_of(requests[2:], manifest), manifest, "d", arrow_schema))
    data = read_capture(tmp_path, manifest)
    assert data.samples == 7 and [data.request_of(p) for p in range(7)] == [
        "r0",
        "r0[1]",
        "r1",
        "r2",
        "r2[1]",
        "r2[2]",
        "r3",
    ]
    shapes = sorted((g.inputs["tokens"].shape, g.outputs["logits"].shape, g.positions.tolist()) for g in data.groups)
    assert shapes == [((2, 7), (2, 7, 3), [2, 6]), ((5, 4), (5, 4, 3), [0, 1, 3, 4, 5])]
    long = next(g for g in data.groups if g.inputs["tokens"].shape[1] == 7)
    np.testing.assert_array_equal(
        long.inputs["tokens"], np.vstack([requests[1].inputs["tokens"], requests[3].inputs["tokens"]])
    )
    assert long.inputs["lang"].tolist() == ["l1", "l3"]
    assert long.outputs["logits"][:, 0, 0].tolist() == [1.0, 3.0]
    assert data.order.tolist() == [0, 1, 3, 4, 5, 2, 6]  # groups by shape, shortest first; arrival order within


def test_a_replay_that_cannot_run_still_leaves_its_junit_report(wine_bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    junit = tmp_path / "replay.xml"
    assert (
        main(["replay", WINE_SPEC, str(tmp_path / "empty"), "--bundle", str(wine_bundle), "--junit", str(junit)]) == 2
    )
    text = junit.read_text()
    assert 'name="bundle replay"' in text and 'type="exit 2"' in text and "holds no captured traffic" in text
