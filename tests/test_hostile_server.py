"""Hostile requests and load against `bundle serve` (issue 17): a request's answer depends on its
batch-mates only through float noise, and a client's mistake is its own 4xx."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json

import numpy as np
import pytest
import torch

import paritybundle
from paritybundle.errors import InputValidationError, ModelRunError
from paritybundle.serving.batching import MicroBatcher
from serving_tools import http, running_server


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
    return paritybundle.export(EmbeddingBag(), tmp_path_factory.mktemp("emb") / "emb", reference_inputs={"ids": ids},
                               name="emb").path


def test_the_graph_tells_which_inputs_index_a_table(embedding_bundle):
    runtime = paritybundle.load(embedding_bundle)
    assert runtime.runner.bounds == {"ids": (-50, 49)}
    with pytest.raises(InputValidationError, match=r"input 'ids' has values outside -50..49"):
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
    for i, (row, result) in enumerate(zip(rows, results)):
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
        assert "outside -50..49" in answers[10][1]["error"]
        expected = paritybundle.load(embedding_bundle).predict({"ids": np.array([[1, 2, 3, 4, 5, 6]])})["output"]
        for status, answer in answers[:10]:
            np.testing.assert_allclose(np.asarray(answer["outputs"][0]["data"]).reshape(1, 3), expected, atol=1e-6)
        assert "Traceback" not in server.log.read_text()
