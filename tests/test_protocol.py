"""V2 wire conversion: exact values, and every mismatch a BadRequest naming the input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paritybundle.bundle.manifest import TensorSpec
from paritybundle.serving.decoding import input_array
from paritybundle.serving.wire import BadRequest, RequestInput

FP32 = TensorSpec(name="x", dtype="float32", shape=["batch", 3])
INT64 = TensorSpec(name="n", dtype="int64", shape=["batch"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=3, max_size=3))
def test_float32_sent_as_json_arrives_bit_identical(values):
    original = np.asarray(values, dtype=np.float32)
    for encoded in (
        json.dumps([float(v) for v in original]),  # the exact double of each float32
        "[" + ",".join(str(v) for v in original) + "]",
    ):  # numpy's shortest float32 repr
        item = RequestInput(name="x", shape=[1, 3], datatype="FP32", data=json.loads(encoded))
        received = input_array(item, FP32, max_batch=8)
        assert received.dtype == np.float32
        assert received.reshape(-1).tobytes() == original.tobytes()


def test_nested_data_is_accepted_in_row_major_order():
    item = RequestInput(name="x", shape=[2, 3], datatype="FP32", data=[[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(input_array(item, FP32, max_batch=8), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    "data, message",
    [
        ([1.5, 2.0], "must hold integers"),
        ([2**70, 1], "outside the range"),
        ([True, False], "must hold integers, got true/false"),
    ],
)
def test_integer_inputs_refuse_inexact_values(data, message):
    with pytest.raises(BadRequest, match=message):
        input_array(RequestInput(name="n", shape=[2], datatype="INT64", data=data), INT64, max_batch=8)


def test_batch_over_the_limit_is_413():
    with pytest.raises(BadRequest) as caught:
        input_array(RequestInput(name="x", shape=[9, 3], datatype="FP32", data=[0.0] * 27), FP32, max_batch=8)
    assert caught.value.status == 413


def test_nonfinite_values_are_accepted_where_the_spec_allows_them():
    spec = FP32.model_copy(update={"allow_nonfinite": True})
    item = RequestInput(name="x", shape=[1, 3], datatype="FP32", data=[float("nan"), 1.0, float("inf")])
    assert np.isnan(input_array(item, spec, max_batch=8)[0, 0])
    with pytest.raises(BadRequest, match="NaN or infinity"):
        input_array(item, FP32, max_batch=8)
