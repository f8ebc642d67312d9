"""The frozen tokenizer as ONNX: a batch of raw strings -> the model's token inputs, ``[batch, max_length]``.

The tokenizing itself is onnxruntime-extensions' custom operators (domain ``ai.onnx.contrib``); what
those operators do not do the way the research tokenizer does is built around them from standard ops,
each for a reason measured against transformers (tests/test_text_bundle.py):

* WordPiece (BERT family): ``BertTokenizer`` reads one text (two would be a sentence pair), so a ``Loop``
  runs it per row; each row is then truncated to ``max_length`` keeping ``[CLS]``/``[SEP]`` and padded on the
  research side. The operator's own ``max_length`` is not used: in 0.15.2 a text of ~100 tokens truncated by
  it overwrote rows tokenized before it in the same batch (measured; the probe "past the maximum length"). Research's cleaning drops U+FFFD, which the operator would read as an unknown word: a
  ``StringRegexReplace`` removes it first.
* Byte-level BPE (GPT-2 family): ``GPT2Tokenizer`` takes the batch and pads with id 0 and mask 0, so the
  padding is replaced by the research pad id, then rows are cut to ``max_length`` and padded to it.

Every batch is padded to ``max_length`` (as research's ``padding="max_length"``), so the features have one
shape whatever the batch, and the check can compare them stage by stage. The operators stop reading a
string at a NUL character: such text is refused at the serving boundary (``TensorSpec.tokenized``).
"""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np

from .graph import MIN_OPSET, ML_OPSET

CONTRIB = "ai.onnx.contrib"


def wordpiece_graph(
    settings: Any,
    vocab: list[str],
    text: str,
    outputs: list[str],
    opset: int,
    normalized: dict[str, str],
    placeholder: str,
) -> Any:
    """The BERT-family tokenizer graph (``settings``: :class:`~.tokenizer.TokenizerSettings`).

    Research's normaliser is reproduced from what it does to each character (:mod:`.text_alphabet`): tab and
    line feed become spaces; ``normalized`` maps each character it rewrites (lower-casing, accents) to what it
    becomes, each it splits words at (punctuation, CJK) to itself between spaces, and each it removes (controls,
    combining marks, U+FFFD) to ``placeholder``, which is then deleted. Words are the space-separated pieces,
    and ``WordpieceTokenizer`` tokenizes each; a word it cannot tokenize whole gives its known pieces and then
    ``[UNK]``, where research gives one ``[UNK]`` for the word, so those words are collapsed here.
    ``[CLS]``/``[SEP]`` frame the row, truncated to ``max_length`` and padded.
    """
    from onnx import TensorProto, helper

    length, special = settings.max_length, settings.special_tokens
    ids = {token: index for index, token in enumerate(vocab)}
    string = lambda name, value: helper.make_tensor(name, TensorProto.STRING, [1], [value.encode()])  # noqa: E731
    consts = [
        _tensor("zero", 0),
        string("line_breaks", "[\\t\\n]"),
        string("space", " "),
        helper.make_tensor("keep_going", TensorProto.BOOL, [], [True]),
    ]
    # The loop body holds its own constants: onnx.compose's renaming (the merge's prefix) does not reach an
    # outer initializer read inside a subgraph.
    row_consts = [
        _tensor("row_max_length", [length]),
        _tensor("row_zero_pad", [0]),
        _tensor("row_pad_id", settings.pad_id),
        _tensor("row_zero", 0),
        _tensor("row_axis0", [0]),
        _tensor("row_one", [1]),
        _tensor("row_one_scalar", 1),
        _tensor("row_unk", ids[special["unk"]]),
        _tensor("row_cls", [ids[special["cls"]]]),
        _tensor("row_sep", [ids[special["sep"]]]),
        _tensor("row_room", [length - 2]),
        _tensor("row_no_rows", np.zeros(0, np.int64)),
        _string_tensor("row_any_char", [], [b"(.)"]),
        _string_tensor("row_empty", [], [b""]),
        _string_tensor("row_space", [], [b" "]),
        _string_tensor("row_placeholder", [1], [f"\\x{{{ord(placeholder):x}}}".encode()]),
        _string_tensor("row_nothing", [1], [b""]),
        helper.make_tensor("row_skip_empty", TensorProto.BOOL, [], [True]),
    ]
    table = "\n".join(f"{key}\t{value}" for key, value in sorted(normalized.items()))
    node = helper.make_node
    # Research pads after the text (right) or before it (left): the pads of a 1-D row are [before, after].
    padding = ["row_zero_pad", "row_pad"] if settings.padding_side == "right" else ["row_pad", "row_zero_pad"]
    body_nodes = [
        node("Gather", ["cleaned", "row"], ["row_text"], name="row/Gather"),
        node("Unsqueeze", ["row_text", "row_axis0"], ["row_one_text"], name="row/Unsqueeze"),
        # Normalise character by character: split, map, join.
        node(
            "StringRegexSplitWithOffsets",
            ["row_one_text", "row_any_char", "row_any_char"],
            ["row_chars", "row_char_begins", "row_char_ends", "row_char_rows"],
            domain=CONTRIB,
            name="normalize/Split",
        ),
        node(
            "StringMapping",
            ["row_chars"],
            ["row_mapped"],
            domain=CONTRIB,
            map=table or "\u0000\t\u0000",
            name="normalize/StringMapping",
        ),
        node(
            "StringJoin", ["row_mapped", "row_empty", "row_zero"], ["row_joined"], domain=CONTRIB, name="normalize/Join"
        ),
        node("Reshape", ["row_joined", "row_one"], ["row_mapped_text"], name="normalize/Reshape"),
        node(
            "StringRegexReplace",
            ["row_mapped_text", "row_placeholder", "row_nothing"],
            ["row_normalized"],
            domain=CONTRIB,
            name="normalize/Removed",
        ),
        # Words, then WordPiece per word (each word a row of its own, so its pieces are found by row).
        node(
            "StringSplit",
            ["row_normalized", "row_space", "row_skip_empty"],
            ["row_word_at", "row_words", "row_words_shape"],
            domain=CONTRIB,
            name="words/StringSplit",
        ),
        node(
            "WordpieceTokenizer",
            ["row_words", "row_no_rows"],
            ["row_pieces", "row_piece_rows", "row_word_begins", "row_word_ends"],
            domain=CONTRIB,
            name="words/Wordpiece",
            vocab=json.dumps(ids, ensure_ascii=False),
            suffix_indicator=settings.subword_prefix,
            unknown_token=special["unk"],
            max_input_chars_per_word=settings.max_word_chars,
        ),
        node(
            "LabelEncoder",
            ["row_pieces"],
            ["row_piece_ids"],
            domain="ai.onnx.ml",
            name="ids/LabelEncoder",
            keys_strings=list(ids),
            values_int64s=list(ids.values()),
            default_int64=ids[special["unk"]],
        ),
        # A word holding [UNK] becomes one [UNK], as research makes it.
        node("Equal", ["row_piece_ids", "row_unk"], ["row_is_unk"], name="unk/Equal"),
        node("Cast", ["row_is_unk"], ["row_unk_flag"], to=TensorProto.INT64, name="unk/Cast"),
        node("Shape", ["row_piece_ids"], ["row_pieces_count"], name="unk/Count"),
        node(
            "ConstantOfShape",
            ["row_pieces_count"],
            ["row_no_starts"],
            name="unk/Zeros",
            value=helper.make_tensor("zero_value", TensorProto.INT64, [1], [0]),
        ),
        node("Shape", ["row_word_begins"], ["row_word_begins_shape"], name="unk/WordCount"),
        node("Expand", ["row_one_scalar", "row_word_begins_shape"], ["row_ones_per_word"], name="unk/Ones"),
        node(
            "ScatterElements",
            ["row_no_starts", "row_word_begins", "row_ones_per_word"],
            ["row_starts"],
            axis=0,
            name="unk/Starts",
        ),
        node("CumSum", ["row_starts", "row_zero"], ["row_word_number"], name="unk/CumSum"),
        node("Sub", ["row_word_number", "row_one_scalar"], ["row_word_of_piece"], name="unk/WordOfPiece"),
        node(
            "ConstantOfShape",
            ["row_word_begins_shape"],
            ["row_no_bad_words"],
            name="unk/NoBad",
            value=helper.make_tensor("zero_value", TensorProto.INT64, [1], [0]),
        ),
        node(
            "ScatterElements",
            ["row_no_bad_words", "row_word_of_piece", "row_unk_flag"],
            ["row_bad_words"],
            axis=0,
            reduction="max",
            name="unk/BadWords",
        ),
        node("Gather", ["row_bad_words", "row_word_of_piece"], ["row_in_bad_word"], name="unk/InBadWord"),
        node("Cast", ["row_in_bad_word"], ["row_in_bad"], to=TensorProto.BOOL, name="unk/InBad"),
        node("Cast", ["row_starts"], ["row_is_start"], to=TensorProto.BOOL, name="unk/IsStart"),
        node("Not", ["row_in_bad"], ["row_in_good"], name="unk/Good"),
        node("Or", ["row_in_good", "row_is_start"], ["row_keep"], name="unk/Keep"),
        node("Where", ["row_in_bad", "row_unk", "row_piece_ids"], ["row_marked"], name="unk/Where"),
        node("Compress", ["row_marked", "row_keep"], ["row_tokens"], axis=0, name="unk/Compress"),
        # [CLS] tokens[:max_length - 2] [SEP], padded to max_length.
        node("Slice", ["row_tokens", "row_zero_pad", "row_room"], ["row_kept"], name="row/Truncate"),
        node("Concat", ["row_cls", "row_kept", "row_sep"], ["row_ids"], axis=0, name="row/Frame"),
        node("Shape", ["row_ids"], ["row_length"], name="row/Shape"),
        node("Sub", ["row_max_length", "row_length"], ["row_pad"], name="row/Sub"),
        node("Concat", padding, ["row_pads"], axis=0, name="row/Pads"),
        node("Pad", ["row_ids", "row_pads", "row_pad_id"], ["ids_out"], name="ids/Pad"),
        node(
            "ConstantOfShape",
            ["row_length"],
            ["row_real"],
            name="mask/Ones",
            value=helper.make_tensor("one_value", TensorProto.INT64, [1], [1]),
        ),
        node("Pad", ["row_real", "row_pads", "row_zero"], ["mask_out"], name="mask/Pad"),
        node("Mul", ["mask_out", "row_zero"], ["types_out"], name="types/Zeros"),
        node("Identity", ["cond_in"], ["cond_out"], name="cond/Identity"),
    ]
    row = helper.make_tensor_value_info
    body = helper.make_graph(
        body_nodes,
        "one_row",
        [row("row", TensorProto.INT64, []), row("cond_in", TensorProto.BOOL, [])],
        [row("cond_out", TensorProto.BOOL, [])]
        + [row(n, TensorProto.INT64, [length]) for n in ("ids_out", "types_out", "mask_out")],
        row_consts,
    )
    nodes = [
        node(
            "StringRegexReplace", [text, "line_breaks", "space"], ["cleaned"], domain=CONTRIB, name="clean/Whitespace"
        ),
        node("Shape", [text], ["batch_shape"], name="batch/Shape"),
        node("Gather", ["batch_shape", "zero"], ["batch_size"], name="batch/Gather"),
        node(
            "Loop",
            ["batch_size", "keep_going"],
            ["input_ids", "token_type_ids", "attention_mask"],
            body=body,
            name="rows/Loop",
        ),
    ]
    return _model(nodes, consts, text, outputs, length, opset)


def byte_level_graph(settings: Any, vocab_json: str, merges: str, text: str, outputs: list[str], opset: int) -> Any:
    """The GPT-2-family tokenizer graph (right padding and truncation only: see ``TokenizerSettings``)."""
    from onnx import TensorProto, helper

    length = settings.max_length
    consts = [
        _tensor("max_length", [length]),
        _tensor("zero_pads", [0, 0, 0]),
        _tensor("pad_id", settings.pad_id),
        _tensor("zero", 0),
        _tensor("starts", [0]),
        _tensor("axis1", [1]),
        _tensor("axis1_end", [2]),
    ]
    nodes = [
        helper.make_node(
            "GPT2Tokenizer",
            [text],
            ["bpe_ids", "bpe_mask"],
            domain=CONTRIB,
            name="tokenize/GPT2Tokenizer",
            vocab=vocab_json,
            merges=merges,
            model_name="GPT2",
        ),
        helper.make_node("Cast", ["bpe_mask"], ["is_token"], to=TensorProto.BOOL, name="mask/Cast"),
        helper.make_node("Where", ["is_token", "bpe_ids", "pad_id"], ["padded_ids"], name="ids/Where"),
        helper.make_node("Slice", ["padded_ids", "starts", "max_length", "axis1"], ["cut_ids"], name="ids/Slice"),
        helper.make_node("Slice", ["bpe_mask", "starts", "max_length", "axis1"], ["cut_mask"], name="mask/Slice"),
        helper.make_node("Shape", ["cut_ids"], ["cut_shape"], name="rows/Shape"),
        helper.make_node("Slice", ["cut_shape", "axis1", "axis1_end"], ["cut_length"], name="rows/Length"),
        helper.make_node("Sub", ["max_length", "cut_length"], ["pad_after"], name="rows/Sub"),
        helper.make_node("Concat", ["zero_pads", "pad_after"], ["pads"], axis=0, name="rows/Concat"),
        helper.make_node("Pad", ["cut_ids", "pads", "pad_id"], ["input_ids"], name="ids/Pad"),
        helper.make_node("Pad", ["cut_mask", "pads", "zero"], ["attention_mask"], name="mask/Pad"),
        helper.make_node("Mul", ["attention_mask", "zero"], ["token_type_ids"], name="types/Zeros"),
    ]
    return _model(nodes, consts, text, outputs, length, opset)


def _string_tensor(name: str, shape: list[int], values: list[bytes]) -> Any:
    """A STRING constant (onnx's type stubs say make_tensor takes numbers; a STRING tensor takes bytes)."""
    from onnx import TensorProto, helper

    return helper.make_tensor(name, TensorProto.STRING, shape, cast(Any, values))


def _tensor(name: str, value: Any) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=np.int64), name)


def _model(nodes: list[Any], consts: list[Any], text: str, outputs: list[str], length: int, opset: int) -> Any:
    """The graph with its raw-text input and the feature outputs the model reads (the others pruned)."""
    from onnx import TensorProto, helper

    produced = {"input_ids", "token_type_ids", "attention_mask"}
    for name in outputs:
        assert name in produced, name
    graph = helper.make_graph(
        nodes,
        "tokenizer",
        [helper.make_tensor_value_info(text, TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", length]) for n in outputs],
        consts,
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", max(opset, MIN_OPSET)),
            helper.make_opsetid("ai.onnx.ml", ML_OPSET),
            helper.make_opsetid(CONTRIB, 1),
        ],
        producer_name="paritybundle",
    )
    model.ir_version = min(model.ir_version, 10)
    return model
