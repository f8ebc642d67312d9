"""The V2 wire's edges: binary tensor bytes, boundaries of each size rule, the exact sentences.

Written against the mutants ``make mutation`` found surviving in ``serving/binary.py`` and
``serving/decoding.py`` (docs/mutation.md). Each boundary is tested on both sides.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from paritybundle.bundle.manifest import TensorSpec
from paritybundle.serving.binary import binary_size, decode_bytes, encode, payloads, split_body, wants_binary
from paritybundle.serving.decoding import InputDecoder, _flat_numbers, decode
from paritybundle.serving.wire import BadRequest, RequestInput, v2_datatype

F32 = TensorSpec(name="x", dtype="float32", shape=["batch", 2])
WORDS = TensorSpec(name="w", dtype="string", shape=["batch"])


def _bad(call, *args, **kwargs) -> str:
    with pytest.raises(BadRequest) as caught:
        call(*args, **kwargs)
    assert caught.value.status == 400
    return caught.value.message


def _binary_input(name, size, datatype="FP32", shape=(1,)):
    return RequestInput(name=name, shape=list(shape), datatype=datatype, parameters={"binary_data_size": size})


# --- splitting the body ------------------------------------------------------------------------------


def test_the_json_part_may_be_one_byte_or_the_whole_body_but_not_empty_or_longer():
    assert split_body(b"{}", None) == (b"{}", b"")
    header, rest = split_body(b"{}abc", "2")
    assert header == b"{}" and bytes(rest) == b"abc"
    assert split_body(b"{}", "2")[0] == b"{}" and bytes(split_body(b"{}", "2")[1]) == b""
    assert split_body(b"{}", "1")[0] == b"{"
    assert _bad(split_body, b"{}", "0") == (
        "Inference-Header-Content-Length is 0, but the body has 2 bytes; it must give the length of the JSON part."
    )
    assert _bad(split_body, b"{}", "3").startswith("Inference-Header-Content-Length is 3, but the body has 2 bytes")
    assert _bad(split_body, b"{}", "two") == "the Inference-Header-Content-Length header is not a number."


# --- the sizes of binary inputs ------------------------------------------------------------------------


def test_a_binary_size_is_a_non_negative_integer_zero_included():
    assert binary_size(_binary_input("x", 0)) == 0
    assert binary_size(_binary_input("x", 8)) == 8
    assert binary_size(RequestInput(name="x", shape=[1], datatype="FP32", data=[1.0])) is None
    for size in (True, -1, "8", 2.0):
        assert _bad(binary_size, _binary_input("x", size)) == (
            f"'x': binary_data_size must be a non-negative integer, got {size!r}."
        )


def test_payloads_are_cut_in_order_and_must_account_for_every_byte():
    items = [
        _binary_input("a", 4),
        RequestInput(name="j", shape=[1], datatype="FP32", data=[1.0]),
        _binary_input("b", 8),
    ]
    cut = payloads(items, memoryview(bytes(range(12))))
    assert bytes(cut["a"]) == bytes(range(4)) and bytes(cut["b"]) == bytes(range(4, 12)) and "j" not in cut
    assert _bad(payloads, items, memoryview(bytes(10))) == (
        "input 'b' declares 8 bytes of binary data, but only 6 follow the JSON."
    )
    assert _bad(payloads, items, memoryview(bytes(15))) == (
        "3 bytes follow the JSON and the binary inputs; binary_data_size must account for every byte after "
        "Inference-Header-Content-Length."
    )


# --- decoding tensor bytes -------------------------------------------------------------------------


def test_tensor_bytes_decode_without_a_copy_and_in_little_endian():
    raw = np.array([1.5, -2.0, 3.25], "<f4").tobytes()
    view = memoryview(raw)
    decoded = decode_bytes("x", view, "float32", 3)
    assert decoded.tolist() == [1.5, -2.0, 3.25] and decoded.dtype == np.float32
    assert np.shares_memory(decoded, np.frombuffer(view, np.uint8))  # zero-copy: the point of binary data
    assert decode_bytes("n", memoryview(np.array([1, -2], "<i8").tobytes()), "int64", 2).tolist() == [1, -2]
    assert _bad(decode_bytes, "x", view, "float32", 4) == (
        "input 'x' has 12 bytes of binary data, but its shape needs 4 x 4 = 16."
    )


def test_bool_bytes_are_zero_or_one_only():
    assert decode_bytes("f", memoryview(bytes([0, 1, 1])), "bool", 3).tolist() == [False, True, True]
    assert (
        _bad(decode_bytes, "f", memoryview(bytes([0, 2])), "bool", 2) == "input 'f' is BOOL; each byte must be 0 or 1."
    )


def _strings(*values: bytes) -> memoryview:
    return memoryview(b"".join(struct.pack("<I", len(v)) + v for v in values))


def test_bytes_elements_are_length_prefixed_utf8_and_arrive_as_python_strings():
    decoded = decode_bytes("w", _strings("é".encode(), b"", b"abc"), "string", 3)
    assert decoded.dtype == object and decoded.tolist() == ["é", "", "abc"]


@pytest.mark.parametrize(
    "data, count, message",
    [
        (_strings(b"ab")[:3], 1, "input 'w': the BYTES data ends before element 0 of 1."),
        (_strings(b"ab"), 2, "input 'w': the BYTES data ends before element 1 of 2."),
        (
            memoryview(struct.pack("<I", 9) + b"abc"),
            1,
            "input 'w': BYTES element 0 declares 9 bytes, past the end of the data.",
        ),
        (
            memoryview(b"".join([struct.pack("<I", 1), b"a", struct.pack("<I", 5), b"abc"])),
            2,
            "input 'w': BYTES element 1 declares 5 bytes, past the end of the data.",
        ),
        (_strings(b"\xff"), 1, "input 'w': BYTES element 0 is not UTF-8 text; this model's strings are text."),
        (memoryview(_strings(b"abc").tobytes() + b"zz"), 1, "input 'w': 2 bytes follow its 1 BYTES elements."),
    ],
)
def test_each_bytes_element_problem_is_named(data, count, message):
    assert _bad(decode_bytes, "w", data, "string", count) == message


def test_a_bytes_problem_is_named_through_the_decoder():
    item = RequestInput(name="w", shape=[1], datatype="BYTES", parameters={"binary_data_size": 3})
    assert _bad(decode, item, WORDS, max_batch=4, payload=memoryview(b"abc")) == (
        "input 'w': the BYTES data ends before element 0 of 1."
    )


# --- encoding outputs ----------------------------------------------------------------------------------


def test_outputs_encode_in_the_declared_dtype_little_endian_row_major():
    assert encode(np.array([[1.0, 2.0]], np.float64), "float32") == np.array([1.0, 2.0], "<f4").tobytes()
    assert encode(np.array([1, 0, 1], np.int64), "bool") == bytes([1, 0, 1])
    assert encode(np.array([[1, 2], [3, 4]], np.int32).T, "int32") == np.array([1, 3, 2, 4], "<i4").tobytes()
    words = np.array([["é", "b"], ["", "cd"]], dtype=object)
    assert encode(words, "string") == _strings("é".encode(), b"b", b"", b"cd").tobytes()


def test_binary_output_flags_must_be_booleans_and_an_outputs_own_flag_wins():
    assert wants_binary({"binary_data_output": True}, None)
    assert not wants_binary({"binary_data_output": True}, {"binary_data": False})
    assert wants_binary(None, {"binary_data": True})
    assert not wants_binary(None, None) and not wants_binary({}, {})
    assert (
        _bad(wants_binary, None, {"binary_data": "yes"})
        == "the binary_data parameter must be true or false, got 'yes'."
    )
    assert _bad(wants_binary, {"binary_data_output": 1}, None) == (
        "the binary_data_output parameter must be true or false, got 1."
    )


# --- JSON data edges ------------------------------------------------------------------------------


def _item(spec, shape, data):
    return RequestInput(name=spec.name, shape=shape, datatype=v2_datatype(spec), data=data)


def test_an_empty_batch_decodes_to_an_empty_array_of_the_dtype():
    decoded = decode(_item(F32, [0, 2], []), F32, max_batch=4)
    assert decoded.shape == (0, 2) and decoded.dtype == np.float32


def test_a_batch_exactly_at_the_limit_is_accepted():
    assert decode(_item(F32, [4, 2], [0.0] * 8), F32, max_batch=4).shape == (4, 2)


def test_mixed_values_are_named_as_such():
    assert _bad(decode, _item(F32, [1, 2], [1.0, "a"]), F32, max_batch=4) == (
        "input 'x' must hold numbers for FP32, got strings."
    )
    assert _bad(decode, _item(F32, [1, 2], [{"a": 1}, 2]), F32, max_batch=4) == (
        "input 'x' must hold numbers for FP32, got mixed values."
    )
    huge = TensorSpec(name="n", dtype="int64", shape=["batch"])
    assert _bad(decode, _item(huge, [1], [2**70]), huge, max_batch=4) == (
        "input 'n' has values outside the range of INT64."
    )


def test_flat_json_numbers_take_the_typed_buffer_path():
    floats = _flat_numbers([1.0, 2, 3.5], F32)
    assert floats.dtype == np.float64 and floats.tolist() == [1.0, 2.0, 3.5]
    ints = _flat_numbers([1, -2], TensorSpec(name="n", dtype="int32", shape=["b"]))
    assert ints.dtype == np.int64 and ints.tolist() == [1, -2]
    unsigned = _flat_numbers([2**64 - 1], TensorSpec(name="u", dtype="uint64", shape=["b"]))
    assert unsigned.dtype == np.uint64 and unsigned.tolist() == [2**64 - 1]
    for data, spec in [
        ([], F32),
        ([[1.0]], F32),
        ([True], F32),
        (["a"], F32),
        ([1.0, None], F32),
        ([1.0], TensorSpec(name="f", dtype="bool", shape=["b"])),
        (["a"], WORDS),
        ([-1], TensorSpec(name="u", dtype="uint64", shape=["b"])),
    ]:
        assert _flat_numbers(data, spec) is None, data


def test_symbolic_dimensions_must_agree_across_inputs():
    a = TensorSpec(name="a", dtype="float32", shape=["batch", "seq"])
    b = TensorSpec(name="b", dtype="float32", shape=["batch", "seq"])
    decoder = InputDecoder([a, b], model="m", max_batch=8)
    ok = decoder([_item(a, [1, 3], [0.0] * 3), _item(b, [1, 3], [0.0] * 3)])
    assert ok["a"].shape == ok["b"].shape == (1, 3)
    message = _bad(decoder, [_item(a, [1, 3], [0.0] * 3), _item(b, [1, 2], [0.0] * 2)])
    assert message == "input 'b' has 2 along 'seq', but another input has 3; all inputs must agree on it."


# --- runtime validation: the edges the wire tests do not reach -------------------------------------

from conftest import require  # noqa: E402

from paritybundle.errors import InputValidationError  # noqa: E402
from paritybundle.runtime import validation  # noqa: E402

A = TensorSpec(name="a", dtype="float32", shape=["batch", 2])
B = TensorSpec(name="b", dtype="float32", shape=["batch", 1])


def _invalid(call, *args, **kwargs) -> str:
    with pytest.raises(InputValidationError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_missing_and_unknown_inputs_list_every_input_the_model_takes():
    assert _invalid(validation.validate_inputs, [A, B], {"a": np.zeros((1, 2), np.float32)}, model="m") == (
        "input 'b' is missing; m takes a, b."
    )
    assert (
        _invalid(validation.validate_inputs, [A, B], {"a": np.zeros((1, 2)), "b": np.zeros((1, 1)), "c": 1}, model="m")
        == "input 'c' is not an input of m; it takes a, b."
    )


def test_lists_are_read_as_arrays_and_ragged_ones_are_refused_in_one_sentence():
    converted = validation.conform(A, [[1.0, 2.0]])
    assert converted.dtype == np.float32 and converted.tolist() == [[1.0, 2.0]]
    assert _invalid(validation.conform, A, [[1.0], [1.0, 2.0]]) == "input 'a' cannot be read as an array."


def test_a_non_contiguous_array_arrives_contiguous_with_its_values():
    wide = np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::3]
    conformed = validation.conform(A, wide)
    assert conformed.flags.c_contiguous and conformed.tolist() == wide.tolist()


def test_a_series_is_not_taken_for_a_dataframe():
    pd = require("pandas", reason="pandas is a dev extra: pip install -e '.[dev]'")
    series = pd.Series([1.0, 2.0])
    assert validation.from_columns([A], series) is series
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    matrix = validation.from_columns([A], frame)  # two columns for a [batch, 2] input: one matrix
    assert list(matrix) == ["a"] and matrix["a"].tolist() == [[1.0, 3.0], [2.0, 4.0]]
    three = pd.DataFrame({"x": [1.0], "y": [2.0], "z": [3.0]})
    assert sorted(validation.from_columns([A], three)) == ["x", "y", "z"]  # no match: by column, and named
    one_d = TensorSpec(name="a", dtype="float32", shape=["batch"])
    assert sorted(validation.from_columns([one_d], frame)) == ["x", "y"]  # not a matrix input
    columns = validation.from_columns([A, B], pd.DataFrame({"a": [1.0], "b": [2.0]}))
    assert columns["b"].shape == (1, 1) and columns["a"].shape == (1,)


def test_bool_outputs_encode_as_zero_or_one_whatever_the_array_held():
    assert encode(np.array([2, 0, -1]), "bool") == bytes([1, 0, 1])


def test_nested_json_data_is_read_row_major_in_the_general_path():
    grid = TensorSpec(name="g", dtype="string", shape=["batch", 2])
    assert decode(_item(grid, [1, 2], [["a", "b"]]), grid, max_batch=4).tolist() == [["a", "b"]]
    big = TensorSpec(name="n", dtype="int64", shape=["batch", 1])
    assert _bad(decode, _item(big, [1, 1], [[2**70]]), big, max_batch=4) == (
        "input 'n' has values outside the range of INT64."
    )
    assert (
        _bad(decode, _item(WORDS, [2], ["a"]), WORDS, max_batch=4) == "input 'w' has 1 values, but shape [2] needs 2."
    )


def test_a_lone_surrogate_is_refused_in_a_two_dimensional_string_input():
    grid = TensorSpec(name="g", dtype="string", shape=["batch", 2])
    assert _invalid(validation.conform, grid, np.array([["ok", "\ud800"]], dtype=object)).startswith(
        "input 'g' holds a string that is not valid Unicode"
    )


def test_the_utf8_scan_is_skipped_only_when_asked():
    """Strings decoded from UTF-8 (an Arrow column) cannot hold a lone surrogate; elsewhere one is refused."""
    from paritybundle.errors import InputValidationError
    from paritybundle.runtime.validation import validate_inputs

    specs = [TensorSpec(name="word", dtype="string", shape=["batch"])]
    lone = np.array(["ok", "\ud800"], dtype=object)
    with pytest.raises(InputValidationError, match="lone surrogate"):
        validate_inputs(specs, {"word": lone})
    assert validate_inputs(specs, {"word": lone}, check_utf8=False)["word"].shape == (2,)
