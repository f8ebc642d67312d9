"""Hostile requests and load against `bundle serve` (issue 17): a request's answer depends on its
batch-mates only through float noise, and a client's mistake is its own 4xx."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from serving_tools import http, running_server

import paritybundle
from paritybundle.errors import InputValidationError, ModelRunError
from paritybundle.serving.batching import MicroBatcher


class EmbeddingBag(torch.nn.Module):
    """Token ids -> mean of their embeddings -> scores: the out-of-range-id case."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(dim=1))


@pytest.fixture(scope="module")
def embedding_bundle(tmp_path_factory):
    ids = np.random.default_rng(0).integers(0, 50, size=(64, 6), dtype=np.int64)
    return paritybundle.export(
        EmbeddingBag(), tmp_path_factory.mktemp("emb") / "emb", reference_inputs={"ids": ids}, name="emb"
    ).path


def test_the_graph_tells_which_inputs_index_a_table(embedding_bundle):
    runtime = paritybundle.load(embedding_bundle)
    assert runtime.runner.bounds == {"ids": (0, 49)}
    with pytest.raises(InputValidationError, match=r"input 'ids' has values outside 0..49"):
        runtime.predict({"ids": np.array([[1, 2, 3, 4, 5, 50]], np.int64)})


def test_a_failing_batch_runs_its_requests_alone_and_only_the_bad_one_fails():
    """The fallback for what cannot be checked before batching: the shared call fails, each runs alone."""

    def run(inputs):
        if (inputs["x"] < 0).any():
            raise ModelRunError("ONNX Runtime could not run the model on these inputs: negative")
        return {"y": inputs["x"] * 2}

    async def scenario():
        batcher = MicroBatcher(run, max_batch_size=64, max_batch_delay_ms=50)
        batcher.start()
        rows = [np.full((1, 2), i, np.float32) for i in range(8)]
        rows[5] = np.full((1, 2), -1, np.float32)
        results = await asyncio.gather(*(batcher.submit({"x": r}) for r in rows), return_exceptions=True)
        await batcher.stop()
        return rows, results

    rows, results = asyncio.run(scenario())
    for i, (row, result) in enumerate(zip(rows, results, strict=True)):
        if i == 5:
            assert isinstance(result, ModelRunError)
        else:
            np.testing.assert_array_equal(result["y"], row * 2)


def _concurrently(url: str, bodies: list[bytes]) -> list[tuple[int, object]]:
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: http("POST", url, body), bodies))


def _string_body(row: dict, color: str) -> bytes:
    inputs = []
    for name, value in row.items():
        if name == "color_band":
            inputs.append({"name": name, "shape": [1], "datatype": "BYTES", "data": ["PLACEHOLDER"]})
        else:
            inputs.append({"name": name, "shape": [1], "datatype": "FP32", "data": [value]})
    return json.dumps({"inputs": inputs}).replace('"PLACEHOLDER"', color).encode()


def test_a_lone_surrogate_fails_its_own_request_only(wine_bundle, tmp_path):
    """Was: one client sending "\\ud83d" (valid JSON) made thousands of batch-mates answer 500."""
    raw = np.load(wine_bundle / "reference" / "inputs.npz")
    row = {name: (str(raw[name][0]) if name == "color_band" else float(raw[name][0])) for name in raw.files}
    good, bad = _string_body(row, json.dumps(row["color_band"])), _string_body(row, '"\\ud83d"')
    with running_server(wine_bundle, tmp_path, "--max-batch-delay-ms", "20") as server:
        for _ in range(3):
            answers = _concurrently(server.url + "/v2/models/wine/infer", [good] * 15 + [bad] + [good] * 15)
            assert [status for status, _ in answers] == [200] * 15 + [400] + [200] * 15
            assert "not valid Unicode" in answers[15][1]["error"]
        assert "Traceback" not in server.log.read_text()


def test_an_out_of_range_token_id_fails_its_own_request_only(embedding_bundle, tmp_path):
    def body(ids):
        return json.dumps({"inputs": [{"name": "ids", "shape": [1, 6], "datatype": "INT64", "data": ids}]}).encode()

    good, bad = body([1, 2, 3, 4, 5, 6]), body([1, 2, 3, 4, 5, 500])
    with running_server(embedding_bundle, tmp_path, "--max-batch-delay-ms", "20") as server:
        answers = _concurrently(server.url + "/v2/models/emb/infer", [good] * 10 + [bad] + [good] * 10)
        assert [status for status, _ in answers] == [200] * 10 + [400] + [200] * 10
        assert "outside 0..49" in answers[10][1]["error"]
        expected = paritybundle.load(embedding_bundle).predict({"ids": np.array([[1, 2, 3, 4, 5, 6]])})["output"]
        for _status, answer in answers[:10]:
            np.testing.assert_allclose(np.asarray(answer["outputs"][0]["data"]).reshape(1, 3), expected, atol=1e-6)
        assert "Traceback" not in server.log.read_text()


def test_a_negative_token_id_is_refused_as_research_refuses_it(embedding_bundle, tmp_path):
    """Was (round 3, item 13): id -1 was served as row V-1 (ONNX's Gather counts from the end), where
    torch's Embedding raises on it."""
    model = EmbeddingBag()
    with pytest.raises(IndexError):
        model(torch.tensor([[1, 2, 3, 4, 5, -1]]))
    body = {"inputs": [{"name": "ids", "shape": [1, 6], "datatype": "INT64", "data": [1, 2, 3, 4, 5, -1]}]}
    with running_server(embedding_bundle, tmp_path) as server:
        status, answer = server.post("/v2/models/emb/infer", body)
    assert status == 400 and "outside 0..49" in answer["error"] and "got -1..5" in answer["error"]
    with pytest.raises(InputValidationError, match=r"outside 0\.\.49"):
        paritybundle.load(embedding_bundle).predict({"ids": np.array([[1, 2, 3, 4, 5, -1]])})


# --- check --url against an endpoint that misbehaves (item 7) -------------------------------------


class _Hostile(BaseHTTPRequestHandler):
    """Answers V2 metadata and readiness properly unless ``mode`` says otherwise."""

    mode = "ok"

    def log_message(self, *args) -> None:
        pass

    def _json(self, payload: bytes, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload) if length is None else length))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        mode = type(self).mode
        if mode == "drip":
            for byte in b"HTTP/1.1 200 OK\r\n":
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.5)
            return
        if mode == "drip-body":  # HTTP/1.0 headers promising 100,000 bytes, then one byte a second
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(60):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass  # the client hung up, as it should
            return
        if mode == "slow-calls":  # every answer whole, each 0.8 s late: under a per-call timeout every time
            time.sleep(0.8)
        if self.path.endswith("/ready"):
            return self._json(b'{"ready": true}')
        if mode == "inputs-is-a-number":
            return self._json(b'{"name": "digits", "platform": "x", "inputs": 5, "outputs": []}')
        if mode == "nested":
            return self._json(b'{"name": "digits", "inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
        self._json(
            json.dumps(
                {
                    "name": "digits",
                    "platform": "x",
                    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
                }
            ).encode()
        )

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        mode = type(self).mode
        if mode == "huge-declared":
            self._json(b"", length=3 * 1024**3)
        elif mode == "huge-streamed":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()  # no length: read until closed
            try:
                self.wfile.write(b'{"outputs": [' + b" " * (100 * 1024**2))
            except OSError:
                pass  # the client stopped reading, as it should
        else:
            self._json(
                b'{"model_name": "digits", "outputs": [{"name": "logits", "shape": [1, 10], "datatype": "FP32", '
                b'"data": "not a list"}]}'
            )


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # the check hanging up on a drip or a flood is the point, not an error


@pytest.fixture
def hostile_endpoint():
    server = _QuietServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "mode, says",
    [
        ("inputs-is-a-number", "without V2 model metadata"),
        ("nested", "is not JSON"),
        ("huge-declared", "refused unread"),
        ("huge-streamed", "stopped reading"),
        ("bad-response", "not a V2 inference response"),
    ],
)
def test_an_endpoint_answering_badly_is_one_sentence_and_exit_2(digits_bundle, hostile_endpoint, mode, says, capsys):
    """Was: a 3 GiB answer took 6.2 GiB of memory (no cap); nested or "inputs": 5 metadata was exit 70."""
    from paritybundle.cli import main

    _Hostile.mode = mode
    url = f"http://127.0.0.1:{hostile_endpoint.server_address[1]}"
    assert main(["check", str(digits_bundle), "--url", url, "--timeout", "20"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


def test_the_timeout_is_for_the_whole_answer_not_for_each_read(digits_bundle, hostile_endpoint, capsys):
    """Was: an endpoint sending one byte a second hung the check forever despite --timeout 5."""
    from paritybundle.cli import main

    _Hostile.mode = "drip"
    url = f"http://127.0.0.1:{hostile_endpoint.server_address[1]}"
    started = time.monotonic()
    assert main(["check", str(digits_bundle), "--url", url, "--timeout", "2"]) == 2
    assert time.monotonic() - started < 15  # 2 s and the check's own start, not the drip's 8.5 s and beyond
    assert "did not answer within the check's deadline of 2 s" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["drip-body", "slow-calls"])
def test_the_timeout_is_one_deadline_for_the_whole_check(digits_bundle, hostile_endpoint, capsys, mode):
    """Was (round 3, item 5): `Content-Length: 100000`, then a byte a second, kept `--timeout 5` running past
    100 s (http.client let go of the socket the deadline would have shut)."""
    from bundle_tools import HOSTILE_COUNTS
    from paritybundle.cli import main

    HOSTILE_COUNTS["round 3, check --url"] = HOSTILE_COUNTS.get("round 3, check --url", 0) + 1
    _Hostile.mode = mode
    url = f"http://127.0.0.1:{hostile_endpoint.server_address[1]}"
    started = time.monotonic()
    assert main(["check", str(digits_bundle), "--url", url, "--timeout", "1.5"]) == 2
    assert time.monotonic() - started < 10
    assert "did not answer within the check's deadline of 1.5 s" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, says",
    [
        (["--url", "http://[::1"], "not a valid URL"),
        (["--url", "http://127.0.0.1:99999"], "not a valid URL"),
        (["--url", "http://127.0.0.1:9", "--timeout", "-1"], "positive number of seconds"),
        (["--url", "http://127.0.0.1:9", "--timeout", "nan"], "positive number of seconds"),
    ],
)
def test_bad_url_options_are_usage_errors(digits_bundle, args, says, capsys):
    from paritybundle.cli import main

    assert main(["check", str(digits_bundle), *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


# --- what a server holds for its clients is bounded (item 12) -------------------------------------


def _peak_rss_kib(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_half_open_connections_are_closed_after_the_header_timeout(digits_bundle, tmp_path):
    """Was: 1,200 connections that sent a request line and then nothing were held indefinitely."""
    import socket

    with running_server(digits_bundle, tmp_path, "--header-timeout", "1") as server:
        stalled = []
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: app")
            stalled.append(sock)
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # sends nothing at all
        stalled.append(idle)
        time.sleep(2.5)
        closed = 0
        for sock in stalled:
            try:
                closed += sock.recv(1) == b""  # orderly close by the server
            except ConnectionResetError:
                closed += 1
            finally:
                sock.close()
        assert closed == len(stalled)
        assert server.get("/v2/health/ready")[0] == 200


def test_concurrent_large_bodies_are_bounded_by_the_in_flight_budget(digits_bundle, tmp_path):
    """Was: 64 concurrent 15 MB bodies peaked at 1.1 GiB. Past the budget a request is answered 503
    with Retry-After before its body is read; every request is answered, none with a 500."""
    rows = np.ones((1, 64), np.float32).tolist()[0]
    # ~15 MB of JSON: rows of a valid request padded with whitespace, which JSON allows.
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": rows}]})
    body = (body[:-1] + " " * (15 * 1024**2) + "}").encode()
    with running_server(digits_bundle, tmp_path, "--max-inflight-bytes", str(32 * 1024**2)) as server:
        before = _peak_rss_kib(server.process.pid)
        answers = _concurrently(server.url + "/v2/models/digits/infer", [body] * 64)
        statuses = sorted(status for status, _ in answers)
        assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
        busy = next(answer for status, answer in answers if status == 503)
        assert "retry shortly" in busy["error"]
        grown_mib = (_peak_rss_kib(server.process.pid) - before) / 1024
        assert grown_mib < 300, f"peak grew by {grown_mib:.0f} MiB with a 32 MiB budget"
        assert server.get("/v2/health/ready")[0] == 200


def test_a_body_that_trickles_is_cut_off_and_the_server_stays_ready(digits_bundle, tmp_path):
    import socket

    with running_server(digits_bundle, tmp_path, "--body-timeout", "1") as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"inputs"'
        )
        time.sleep(2.5)
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
        sock.close()
        assert answer == b"" or b"HTTP/1.1 4" in answer  # closed, or told why: never held, never a 5xx
        assert server.get("/v2/health/ready")[0] == 200
