"""Hardening round 3 (issue 26): what an outside attack on binary tensors, capture, captured files,
`bundle score` and `bundle pull` broke, each now refused with its sentence and exit code or 4xx."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient

from paritybundle.serving.app import create_app
from paritybundle.serving.limits import answer_bytes
from paritybundle.serving.state import ServeOptions
from bundle_tools import HOSTILE_COUNTS


def _counted(area: str, cases: int = 1) -> None:
    """Count hostile cases per area; conftest prints the counts at the end of the session (CI's log)."""
    key = f"round 3, {area}"
    HOSTILE_COUNTS[key] = HOSTILE_COUNTS.get(key, 0) + cases


# --- 1. output amplification ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_answers(digits_bundle):
    """A server whose answers may be at most 4 KiB: 40 rows of 10 scores pass, 400 do not."""
    with TestClient(create_app(ServeOptions(bundle=str(digits_bundle), max_answer_bytes=4096))) as client:
        yield client


def _pixels_body(digits_bundle, rows: int, outputs=None, **parameters) -> dict:
    pixels = np.load(digits_bundle / "reference" / "inputs.npz")["pixels"][:rows]
    body = {"inputs": [{"name": "pixels", "shape": list(pixels.shape), "datatype": "FP32",
                        "data": pixels.reshape(-1).tolist()}]}
    if outputs is not None:
        body["outputs"] = outputs
    if parameters:
        body["parameters"] = parameters
    return body


def test_an_output_named_twice_is_a_400(small_answers, digits_bundle):
    """Was: a 0.49 MB request naming `logits` 4,000 times got a 789 MB answer."""
    _counted("server")
    answer = small_answers.post("/v2/models/digits/infer",
                                json=_pixels_body(digits_bundle, 1, [{"name": "logits"}] * 4000))
    assert answer.status_code == 400
    assert answer.json() == {"error": "output 'logits' is asked for more than once; name each output once."}


def test_binary_outputs_named_many_times_are_a_400_not_a_500(small_answers, digits_bundle):
    """Was: 2,000 binary outputs in a 0.1 MB request raised MemoryError and answered 500."""
    _counted("server")
    outputs = [{"name": "logits", "parameters": {"binary_data": True}}] * 2000
    answer = small_answers.post("/v2/models/digits/infer", json=_pixels_body(digits_bundle, 1, outputs))
    assert answer.status_code == 400 and "more than once" in answer.json()["error"]


@pytest.mark.parametrize("binary", [False, True])
def test_an_answer_past_the_limit_is_a_413_naming_it_before_it_is_built(small_answers, digits_bundle, binary):
    _counted("server")
    fits = small_answers.post("/v2/models/digits/infer", json=_pixels_body(digits_bundle, 4, binary_data_output=binary))
    assert fits.status_code == 200
    answer = small_answers.post("/v2/models/digits/infer", json=_pixels_body(digits_bundle, 400,
                                                                             binary_data_output=binary))
    assert answer.status_code == 413
    assert "over this server's limit of 4096 (--max-answer-bytes)" in answer.json()["error"]


def test_the_answer_bound_is_never_below_what_is_built():
    """The bound judged before building must hold for what orjson then writes (the worst floats and ints)."""
    import orjson

    from paritybundle.bundle.manifest import TensorSpec
    from paritybundle.serving.wire import output_json

    worst = {"float64": np.array([-2.2250738585072014e-308, -1.7976931348623157e308]),
             "float32": np.array([-1.1754944e-38, np.float32(-3.4028235e38)], np.float32),
             "float16": np.array([-6.1e-05, -65504.0], np.float16),
             "int64": np.array([np.iinfo(np.int64).min] * 2), "uint64": np.array([np.iinfo(np.uint64).max] * 2),
             "int32": np.array([np.iinfo(np.int32).min] * 2), "int8": np.array([-128] * 2, np.int8),
             "bool": np.array([False, False]), "string": np.array(["\x01\x02", "é" * 3], dtype=object)}
    for dtype, values in worst.items():
        spec = TensorSpec(name="o", dtype=dtype, shape=["batch"])
        built = len(orjson.dumps(output_json("o", values, spec)))
        assert built <= answer_bytes([values], [dtype], [False]), dtype
