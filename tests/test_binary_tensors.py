"""The V2 binary tensor data extension, both ways, and BYTES tensors (issue 16, problem 6).

Requests are built and answers read with tritonclient's own encoder and decoder
(``generate_request_body``, ``InferResult.from_response_body``), so the server is held to what the
reference client does, not to our reading of the spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require  # noqa: E402
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from paritybundle.serving import binary
from paritybundle.serving.wire import BadRequest, RequestInput

httpclient = require("tritonclient.http", reason="tritonclient is a dev extra: pip install -e '.[dev]'")
from starlette.testclient import TestClient  # noqa: E402

from paritybundle.serving.app import create_app  # noqa: E402
from paritybundle.serving.state import ServeOptions  # noqa: E402

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def digits_client(digits_bundle):
    with TestClient(create_app(ServeOptions(bundle=str(digits_bundle)))) as client:
        yield client


@pytest.fixture(scope="module")
def pixels(digits_bundle):
    return np.load(digits_bundle / "reference" / "inputs.npz")["pixels"]


def _post(client, model: str, inputs, outputs=None, **parameters):
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, parameters=parameters or None
    )
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers[HEADER] = str(json_size)
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def _result(response):
    length = response.headers.get(HEADER)
    return httpclient.InferResult.from_response_body(response.content, header_length=int(length) if length else None)


def _pixels_input(rows: np.ndarray, binary_data: bool = True):
    item = httpclient.InferInput("pixels", list(rows.shape), "FP32")
    item.set_data_from_numpy(rows, binary_data=binary_data)
    return item


def test_tritonclient_defaults_binary_both_ways_match_the_json_answer(digits_client, pixels):
    rows = pixels[:64]
    response = _post(digits_client, "digits", [_pixels_input(rows)])  # binary in; no outputs named: binary out
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    as_json = digits_client.post(
        "/v2/models/digits/infer",
        json={"inputs": [{"name": "pixels", "shape": [64, 64], "datatype": "FP32", "data": rows.reshape(-1).tolist()}]},
    ).json()
    expected = np.asarray(as_json["outputs"][0]["data"], np.float32).reshape(as_json["outputs"][0]["shape"])
    np.testing.assert_array_equal(_result(response).as_numpy(as_json["outputs"][0]["name"]), expected)


def test_each_output_is_answered_as_it_asks(digits_client, pixels):
    name = json.loads(digits_client.get("/v2/models/digits").text)["outputs"][0]["name"]
    for binary_data in (True, False):
        requested = [httpclient.InferRequestedOutput(name, binary_data=binary_data)]
        response = _post(digits_client, "digits", [_pixels_input(pixels[:3], binary_data=False)], outputs=requested)
        assert response.status_code == 200
        header = _result(response).get_response()["outputs"][0]
        assert ("binary_data_size" in header.get("parameters", {})) is binary_data
        assert ("data" in header) is not binary_data
        assert (HEADER in response.headers) is binary_data


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda body, size: (body, str(len(body) + 5)), "Inference-Header-Content-Length is"),
        (lambda body, size: (body, "twelve"), "is not a number"),
        (lambda body, size: (body + b"\0\0\0\0", str(size)), "bytes follow the JSON"),
        (lambda body, size: (body[:-4], str(size)), "declares 1024 bytes of binary data, but only 1020"),
        (lambda body, size: (body[size:], None), "not valid JSON"),
    ],
)
def test_malformed_binary_requests_are_400_with_one_sentence(digits_client, pixels, mangle, message):
    body, size = httpclient.InferenceServerClient.generate_request_body([_pixels_input(pixels[:4])])
    body, header = mangle(body, size)
    headers = {HEADER: header} if header is not None else {}
    response = digits_client.post("/v2/models/digits/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert digits_client.get("/v2/health/ready").status_code == 200


def test_binary_size_that_disagrees_with_the_shape_is_400(digits_client, pixels):
    header = json.dumps(
        {
            "inputs": [
                {"name": "pixels", "shape": [2, 64], "datatype": "FP32", "parameters": {"binary_data_size": 64 * 4}}
            ]
        }
    ).encode()
    response = digits_client.post(
        "/v2/models/digits/infer", content=header + pixels[:1].tobytes(), headers={HEADER: str(len(header))}
    )
    assert response.status_code == 400 and "shape needs 128 x 4" in response.json()["error"]


@pytest.fixture(scope="module")
def echo_bundle(tmp_path_factory):
    """A model with a string input and a string output, made elsewhere as ONNX."""
    import onnx
    from onnx import TensorProto, helper

    import paritybundle

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"])],
    )
    folder = tmp_path_factory.mktemp("echo")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "echo.onnx"))
    text = np.array(["héllo", "", "wörld ✓", "a\x00b"], dtype=object)
    result = paritybundle.export(
        str(folder / "echo.onnx"),
        folder / "bundle",
        name="echo",
        reference_inputs={"text": text},
        research_outputs={"echo": text},
    )
    return result.path


def test_bytes_tensors_travel_binary_both_ways(echo_bundle):
    text = np.array(["naïve", "", "日本語", "x" * 300], dtype=object)
    with TestClient(create_app(ServeOptions(bundle=str(echo_bundle)))) as client:
        item = httpclient.InferInput("text", [4], "BYTES")
        item.set_data_from_numpy(text)  # binary, length-prefixed
        response = _post(client, "echo", [item])
        assert response.status_code == 200, response.text
        echoed = _result(response).as_numpy("echo")
        assert [v.decode("utf-8") for v in echoed] == list(text)
        json_item = httpclient.InferInput("text", [4], "BYTES")
        json_item.set_data_from_numpy(text, binary_data=False)
        as_json = _post(
            client, "echo", [json_item], outputs=[httpclient.InferRequestedOutput("echo", binary_data=False)]
        )
        assert as_json.json()["outputs"][0]["data"] == list(text)


def test_bytes_that_are_not_utf8_are_400(echo_bundle):
    with TestClient(create_app(ServeOptions(bundle=str(echo_bundle)))) as client:
        payload = (2).to_bytes(4, "little") + b"\xff\xfe"
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "text",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(payload)},
                    }
                ]
            }
        ).encode()
        response = client.post("/v2/models/echo/infer", content=header + payload, headers={HEADER: str(len(header))})
        assert response.status_code == 400 and "not UTF-8" in response.json()["error"]


_DTYPES = [
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(_DTYPES))
def test_encode_then_decode_is_the_identity_for_every_dtype(data, dtype):
    array = data.draw(hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)))
    encoded = binary.encode(array, dtype)
    assert len(encoded) == array.size * np.dtype(dtype).itemsize
    decoded = binary.decode_bytes("x", memoryview(encoded), dtype, array.size).reshape(array.shape)
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()  # bit for bit, NaN payloads included


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.text(max_size=20), min_size=0, max_size=8))
def test_bytes_elements_round_trip(values):
    array = np.array(values, dtype=object)
    decoded = binary.decode_bytes("s", memoryview(binary.encode(array, "string")), "string", len(values))
    assert list(decoded) == values


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64), count=st.integers(0, 6), dtype=st.sampled_from(_DTYPES + ["string"]))
def test_arbitrary_bytes_decode_or_are_a_bad_request(raw, count, dtype):
    try:
        binary.decode_bytes("x", memoryview(raw), dtype, count)
    except BadRequest as exc:
        assert exc.status == 400


def test_payloads_are_cut_in_input_order():
    items = [
        RequestInput(name="a", shape=[2], datatype="INT8", parameters={"binary_data_size": 2}),
        RequestInput(name="b", shape=[1], datatype="INT8", data=[5]),
        RequestInput(name="c", shape=[3], datatype="INT8", parameters={"binary_data_size": 3}),
    ]
    cut = binary.payloads(items, memoryview(b"\x01\x02\x03\x04\x05"))
    assert bytes(cut["a"]) == b"\x01\x02" and bytes(cut["c"]) == b"\x03\x04\x05" and "b" not in cut
    with pytest.raises(BadRequest, match="neither data nor"):
        binary.payloads([RequestInput(name="a", shape=[1], datatype="INT8")], memoryview(b""))
    with pytest.raises(BadRequest, match="both data and binary_data_size"):
        binary.payloads(
            [RequestInput(name="a", shape=[1], datatype="INT8", data=[1], parameters={"binary_data_size": 1})],
            memoryview(b"\x01"),
        )
    with pytest.raises(BadRequest, match="non-negative integer"):
        binary.payloads(
            [RequestInput(name="a", shape=[1], datatype="INT8", parameters={"binary_data_size": -1})], memoryview(b"")
        )


def test_server_metadata_lists_the_extension(digits_client):
    assert "binary_tensor_data" in digits_client.get("/v2").json()["extensions"]
