"""The longest sequence a model takes is found at export and enforced when serving (issue 27, item 6).

Was: a request one token past the position table reached ONNX Runtime, which answered with its raw
error ("Attempting to broadcast an axis by a dimension other than 1. 64 by 65").
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from serving_tools import running_server

import paritybundle
from paritybundle.errors import InputValidationError


class PositionTable(torch.nn.Module):
    def __init__(self, positions: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tokens = torch.nn.Embedding(100, 8)
        self.positions = torch.nn.Embedding(positions, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        where = torch.arange(ids.shape[1], device=ids.device)
        return self.head((self.tokens(ids) + self.positions(where)).mean(dim=1))


class NoPositions(PositionTable):
    def forward(self, ids):
        return self.head(self.tokens(ids).mean(dim=1))


IDS = np.random.default_rng(0).integers(0, 100, size=(40, 20))


@pytest.fixture(scope="module")
def sequence_bundle(tmp_path_factory):
    return paritybundle.export(
        PositionTable().eval(),
        tmp_path_factory.mktemp("seq") / "seq",
        reference_inputs={"ids": IDS},
        name="seq",
        dynamic_axes={"ids": {1: "sequence"}},
    ).path


def test_export_records_the_longest_sequence_the_graph_runs(sequence_bundle):
    runtime = paritybundle.load(sequence_bundle)
    assert runtime.manifest.inputs[0].max_dims == {"sequence": 64}
    assert runtime.predict({"ids": np.ones((1, 64), np.int64)})["output"].shape == (1, 3)
    with pytest.raises(
        InputValidationError,
        match=r"input 'ids' has 65 along 'sequence', over this model's maximum "
        r"of 64",
    ):
        runtime.predict({"ids": np.ones((1, 65), np.int64)})
    with pytest.raises(IndexError):  # research refuses it too
        PositionTable().eval()(torch.ones((1, 65), dtype=torch.int64))


def test_a_graph_without_a_limit_records_none(tmp_path):
    result = paritybundle.export(
        NoPositions().eval(),
        tmp_path / "free",
        reference_inputs={"ids": IDS},
        name="free",
        dynamic_axes={"ids": {1: "sequence"}},
    )
    assert result.manifest.inputs[0].max_dims is None
    assert "max_dims" not in json.loads((result.path / "bundle.json").read_text())["inputs"][0]


def test_the_server_advertises_the_maximum_and_answers_a_longer_request_400(sequence_bundle, tmp_path):
    with running_server(sequence_bundle, tmp_path) as server:
        status, metadata = server.get("/v2/models/seq")
        assert status == 200 and metadata["parameters"]["max_dims"] == {"ids": {"sequence": 64}}
        body = {"inputs": [{"name": "ids", "shape": [1, 65], "datatype": "INT64", "data": [1] * 65}]}
        status, answer = server.post("/v2/models/seq/infer", body)
        assert status == 400 and "over this model's maximum of 64" in answer["error"]
        body["inputs"][0].update(shape=[1, 64], data=[1] * 64)
        assert server.post("/v2/models/seq/infer", body)[0] == 200
