"""A real V2 server on loopback: ready gating, bad requests, concurrency, --url, shutdown."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from serving_tools import free_port, http, running_server

import paritybundle
from bundle_tools import perturb_weights, rehash
from paritybundle.cli import main
from paritybundle.commands.endpoint import check_url


@pytest.fixture(scope="module")
def server(digits_bundle, tmp_path_factory):
    with running_server(digits_bundle, tmp_path_factory.mktemp("serve")) as running:
        yield running


@pytest.fixture(scope="module")
def pixels(digits_bundle):
    return np.load(digits_bundle / "reference" / "inputs.npz")["pixels"]


def body_for(rows: np.ndarray) -> dict:
    return {
        "inputs": [{"name": "pixels", "shape": list(rows.shape), "datatype": "FP32", "data": rows.reshape(-1).tolist()}]
    }


def test_health_and_metadata(server):
    assert server.get("/v2/health/live") == (200, {"live": True})
    assert server.get("/v2/health/ready") == (200, {"ready": True})
    status, meta = server.get("/v2/models/digits")
    assert status == 200 and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["parity"]["passed"] is True
    assert server.get("/v2/models/digits/versions/1")[0] == 200
    assert server.get("/v2/models/digits/ready") == (200, {"name": "digits", "ready": True})
    assert server.get("/v2/models/digits/versions/1/ready")[0] == 200
    assert server.get("/v2")[1]["name"] == "paritybundle"


def test_answers_follow_the_wire_models(server, pixels):
    """The server builds its answers as dicts for speed; they must still be what the V2 models say."""
    from paritybundle.serving.wire import InferenceResponse, ModelMetadata

    status, answer = server.post("/v2/models/digits/infer", {"id": "r", **body_for(pixels[:2])})
    assert status == 200
    parsed = InferenceResponse.model_validate(answer)
    assert parsed.id == "r" and parsed.outputs[0].shape == [2, 10] and len(parsed.outputs[0].data) == 20
    status, meta = server.get("/v2/models/digits")
    assert status == 200 and ModelMetadata.model_validate(meta).inputs[0].shape == [-1, 64]


def test_infer_matches_in_process_prediction_bit_for_bit(server, digits_bundle, pixels):
    rows = pixels[:5]
    status, answer = server.post("/v2/models/digits/versions/1/infer", {"id": "req-7", **body_for(rows)})
    assert status == 200 and answer["id"] == "req-7" and answer["model_version"] == "1"
    output = answer["outputs"][0]
    assert output["name"] == "logits" and output["shape"] == [5, 10] and output["datatype"] == "FP32"
    served = np.asarray(output["data"], dtype=np.float32).reshape(5, 10)
    expected = paritybundle.load(digits_bundle).predict(rows)["logits"]
    np.testing.assert_array_equal(served, expected)


def _row_json(values: str, count: int = 64, shape=(1, 64), datatype="FP32", name="pixels") -> str:
    return json.dumps(
        {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": "PLACEHOLDER"}]}
    ).replace('"PLACEHOLDER"', values)


ONES = "[" + ",".join(["1"] * 64) + "]"
MALFORMED = {
    "truncated json": (ONES[:50], 400),
    "empty body": ("", 400),
    "json array": ("[1, 2, 3]", 400),
    "no inputs": ('{"inputs": []}', 400),
    "unknown key": ('{"inputz": []}', 400),
    "unknown input name": (_row_json(ONES, name="pxls"), 400),
    "wrong datatype": (_row_json(ONES, datatype="FP64"), 400),
    "unknown datatype": (_row_json(ONES, datatype="FLOAT"), 400),
    "wrong rank": (_row_json(ONES, shape=(64,)), 400),
    "wrong width": (_row_json("[" + ",".join(["1"] * 63) + "]", shape=(1, 63)), 400),
    "count mismatch": (_row_json("[1, 2, 3]"), 400),
    "negative dim": (_row_json(ONES, shape=(-1, 64)), 400),
    "strings for FP32": (_row_json("[" + ",".join(['"a"'] * 64) + "]"), 400),
    "bools for FP32": (_row_json("[" + ",".join(["true"] * 64) + "]"), 400),
    "ragged nested data": (_row_json("[[1, 2], [3]]", shape=(1, 64)), 400),
    "NaN": (_row_json("[NaN" + ",1" * 63 + "]"), 400),
    "Infinity": (_row_json("[Infinity" + ",1" * 63 + "]"), 400),
    "overflowing float32": (_row_json("[1e300" + ",1" * 63 + "]"), 400),
    "null data": (_row_json("null"), 400),
    "object data": (_row_json('{"a": 1}'), 400),
    "duplicate input": ('{"inputs": [' + ",".join([_row_json(ONES)[12:-2]] * 2) + "]}", 400),
    "unknown output": (_row_json(ONES)[:-1] + ', "outputs": [{"name": "probs"}]}', 400),
    "deeply nested json": ("[" * 100000 + "]" * 100000, 400),
    "batch over the limit": (_row_json("[" + ",".join(["1"] * 64 * 1025) + "]", shape=(1025, 64)), 413),
    "not utf-8": (b"\xff\xfe\x00garbage", 400),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_4xx_with_an_error_and_the_server_stays_ready(server, case):
    body, expected = MALFORMED[case]
    status, answer = http("POST", server.url + "/v2/models/digits/infer", body)
    assert status == expected, answer
    assert isinstance(answer, dict) and answer["error"], answer
    assert server.get("/v2/health/ready")[0] == 200


def test_body_declared_over_the_limit_is_413_before_it_is_read(server):
    # Read the answer after the headers and a little body, as a client honouring early errors does.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 17000000\r\n\r\n" + b" " * 1024
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)  # headers and body may arrive in separate packets
            if not chunk:
                break
            answer += chunk
    head = answer.decode()
    assert head.startswith("HTTP/1.1 413") and "over this server's limit" in head
    assert server.get("/v2/health/ready")[0] == 200


def test_unknown_model_and_version_are_404(server):
    assert server.post("/v2/models/nope/infer", body_for(np.ones((1, 64))))[0] == 404
    status, answer = server.post("/v2/models/digits/versions/9/infer", body_for(np.ones((1, 64))))
    assert status == 404 and "no version '9'" in answer["error"]
    assert server.get("/v2/models/nope")[0] == 404


def test_wrong_method_is_4xx(server):
    assert http("GET", server.url + "/v2/models/digits/infer")[0] == 405


def test_concurrent_requests_get_their_own_results(server, digits_bundle, pixels):
    runtime = paritybundle.load(digits_bundle)
    tolerance = runtime.manifest.tolerance.default
    rows = [pixels[i : i + 1 + i % 3] for i in range(96)]  # 1-3 rows each, all different

    def ask(chunk):
        return chunk, server.post("/v2/models/digits/infer", body_for(chunk))

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(ask, rows))
    for chunk, (status, answer) in results:
        assert status == 200, answer
        served = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(len(chunk), 10)
        alone = runtime.predict(chunk)["logits"]  # the same rows run without batch-mates
        assert np.all(np.abs(served - alone) <= tolerance.atol + tolerance.rtol * np.abs(alone))
    metrics = http("GET", server.url + "/metrics")[1]
    # Some ONNX Runtime calls carried more than one request's rows.
    count_le_1 = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith('paritybundle_batch_rows_bucket{le="1.0"}')
        )
    )
    total = float(
        next(line.split()[-1] for line in metrics.splitlines() if line.startswith("paritybundle_batch_rows_count"))
    )
    assert total > 0 and count_le_1 < total


def test_metrics_count_requests_by_status(server):
    server.post("/v2/models/digits/infer", "{")
    text = http("GET", server.url + "/metrics")[1]
    assert 'paritybundle_requests_total{endpoint="infer",status="400"}' in text
    assert "paritybundle_parity_verdict 1.0" in text
    assert "paritybundle_request_latency_seconds_bucket" in text


def test_check_url_passes_against_the_server(server, digits_bundle, capsys):
    report = check_url(digits_bundle, server.url, request_batch=50)
    assert report.passed and report.settings.source == "url" and report.settings.samples == 450
    assert main(["check", str(digits_bundle), "--url", server.url]) == 0
    assert "PARITY HOLDS" in capsys.readouterr().out


def test_bundle_whose_parity_fails_never_becomes_ready(bundle_copy, tmp_path):
    perturb_weights(bundle_copy, relative_noise=0.001)
    with running_server(bundle_copy, tmp_path, until="settled") as bad:
        time.sleep(0.5)
        status, body = bad.get("/v2/health/ready")
        assert status == 503 and body["status"] == "failed" and "parity fails" in body["reason"]
        status, meta = bad.get("/v2/models/digits")
        assert status == 200 and meta["parameters"]["ready"] is False and "logits" in meta["parameters"]["reason"]
        status, answer = bad.post("/v2/models/digits/infer", body_for(np.ones((1, 64), np.float32)))
        assert status == 503 and "not ready" in answer["error"]
        assert "paritybundle_parity_verdict 0.0" in http("GET", bad.url + "/metrics")[1]
        assert "not ready" in bad.log.read_text()


def test_check_url_fails_against_a_server_running_another_model(digits_example, digits_bundle, tmp_path, capsys):
    from paritybundle.training import export_spec

    other = export_spec(digits_example.make_spec(epochs=1), tmp_path / "other").path  # same name, specs: another model
    with running_server(other, tmp_path) as wrong:
        report = check_url(digits_bundle, wrong.url)
        assert not report.passed and report.failed_outputs == ["logits"]
        assert main(["check", str(digits_bundle), "--url", wrong.url]) == 1
        assert "output 'logits' failed" in capsys.readouterr().out


def test_check_url_errors_are_clear(digits_bundle, tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["check", str(digits_bundle), "--url", dead]) == 2
    assert "cannot reach" in capsys.readouterr().err

    # A plain HTTP file server is not a V2 server.
    port = free_port()
    files = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        assert main(["check", str(digits_bundle), "--url", f"http://127.0.0.1:{port}"]) == 2
        assert "V2" in capsys.readouterr().err
    finally:
        files.terminate()
        files.wait()

    # A server that accepts connections and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        assert main(["check", str(digits_bundle), "--url", url, "--timeout", "1"]) == 2
        assert "did not answer within the check's deadline of 1 s" in capsys.readouterr().err
    finally:
        stop.set()
        thread.join()
        listener.close()
        for conn in held:
            conn.close()


def test_sigterm_lets_in_flight_requests_finish(digits_bundle, tmp_path, pixels):
    # A 1.5 s batching delay keeps the request in flight when SIGTERM arrives.
    with running_server(digits_bundle, tmp_path, "--max-batch-delay-ms", "1500") as slow:
        answers = []
        worker = threading.Thread(
            target=lambda: answers.append(slow.post("/v2/models/digits/infer", body_for(pixels[:1])))
        )
        worker.start()
        time.sleep(0.5)
        slow.process.send_signal(signal.SIGTERM)
        worker.join(timeout=30)
        assert answers and answers[0][0] == 200, answers
        # uvicorn finishes in-flight requests, then re-raises the signal so the parent sees SIGTERM.
        assert slow.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Finished server process" in slow.log.read_text()


def test_serve_refuses_a_tampered_bundle_before_listening(bundle_copy, capsys):
    (bundle_copy / "model.onnx").write_bytes(b"tampered")
    assert main(["serve", str(bundle_copy), "--port", str(free_port())]) == 3
    assert "model.onnx is 8 bytes" in capsys.readouterr().err


def test_serve_refuses_a_pipeline_onnx_runtime_cannot_load_before_listening(bundle_copy, capsys):
    # Consistently re-hashed, so only loading it finds the fault: the session is opened before the port is bound.
    (bundle_copy / "pipeline.onnx").write_bytes(b"\x08\x07not a model")
    rehash(bundle_copy)
    port = free_port()
    assert main(["serve", str(bundle_copy), "--port", str(port)]) == 3
    assert "pipeline.onnx" in capsys.readouterr().err
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing ever listened


def test_two_workers_each_check_and_serve(digits_bundle, tmp_path, pixels):
    with running_server(digits_bundle, tmp_path, "--workers", "2") as pair:
        for _ in range(8):
            assert pair.post("/v2/models/digits/infer", body_for(pixels[:2]))[0] == 200
        # Each worker process ran its own start-up check on its own session: one "parity holds" line each
        # (the supervisor only verifies the bundle; it holds no session and checks nothing).
        deadline = time.monotonic() + 30
        while pair.log.read_text().count("parity holds on") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        ready = [line for line in pair.log.read_text().splitlines() if "parity holds on" in line]
        assert len(ready) == 2, pair.log.read_text()[-3000:]
