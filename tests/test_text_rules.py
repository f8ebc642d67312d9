"""The serving boundary's rules for raw text a frozen tokenizer reads (issue 28), in process: what
``TextRules`` accepts in a manifest, and what ``conform`` refuses of a request. No tokenizer needed."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from paritybundle.bundle.manifest import TensorSpec, TextRules
from paritybundle.errors import InputValidationError
from paritybundle.runtime.validation import conform, refused_pattern

# NUL, the surrogates, everything above U+2FFFF, and one ordinary character (é) for the test.
RULES = TextRules(refused_chars="0-0,e9-e9,d800-dfff,30000-10ffff")


def text_spec(rules: TextRules | None = RULES) -> TensorSpec:
    return TensorSpec(name="text", dtype="string", shape=["batch"], text=rules)


@pytest.mark.parametrize("runs", ["0-0", "0-0,41-5a", "30000-10ffff", "10ffff-10ffff"])
def test_refused_runs_that_are_code_point_ranges_are_accepted(runs):
    assert TextRules(refused_chars=runs).refused_chars == runs


@pytest.mark.parametrize("runs", ["ff-0", "0-110000", "110000-110000", "", "0-0,", "x-y", "0_0", "0-0;1-1"])
def test_refused_runs_that_are_not_ranges_are_refused(runs):
    with pytest.raises(ValidationError):
        TextRules(refused_chars=runs)


@pytest.mark.parametrize("text", ["plain", "", "naïve", "猫 😀", "tab\tand\nnew line", "\U0002ffff"])
def test_text_of_proven_characters_passes(text):
    assert conform(text_spec(), np.array([text], dtype=object)).tolist() == [text]


@pytest.mark.parametrize(
    "text, code, offset",
    [("ab\x00cd", "U+0000", 2), ("café", "U+00E9", 3), ("x \U00030000", "U+30000", 2), ("\U0010ffff", "U+10FFFF", 0)],
)
def test_text_holding_a_refused_character_is_refused_naming_it(text, code, offset):
    with pytest.raises(InputValidationError) as caught:
        conform(text_spec(), np.array(["fine", text], dtype=object))
    message = str(caught.value)
    assert "text 1 holds" in message and code in message and f"offset {offset}" in message
    assert "not proven" in message


def test_nul_is_named_as_a_control_character_not_printed():
    with pytest.raises(InputValidationError) as caught:
        conform(text_spec(), np.array(["a\x00"], dtype=object))
    assert "a control character (U+0000)" in str(caught.value) and "\x00" not in str(caught.value)


def test_empty_text_is_refused_only_where_the_tokenizer_gives_it_no_tokens():
    conform(text_spec(), np.array([""], dtype=object))
    refusing = text_spec(TextRules(refused_chars="0-0", empty_refused=True))
    conform(refusing, np.array(["x"], dtype=object))
    with pytest.raises(InputValidationError, match="text 1 is empty"):
        conform(refusing, np.array(["x", ""], dtype=object))


def test_string_inputs_without_text_rules_keep_every_character():
    assert conform(text_spec(None), np.array(["a\x00b", "café"], dtype=object)).tolist() == ["a\x00b", "café"]


def test_the_refused_pattern_is_one_class_of_the_runs():
    pattern = refused_pattern("41-43,30000-10ffff")
    assert [bool(pattern.search(c)) for c in "@ABCD"] == [False, True, True, True, False]
    assert pattern.search("\U0002ffff") is None and pattern.search("\U00030000")


def test_text_past_the_serving_bound_is_refused_saying_the_bound():
    from paritybundle.runtime.validation import MAX_TEXT_CHARS

    conform(text_spec(), np.array(["a" * MAX_TEXT_CHARS], dtype=object))
    with pytest.raises(InputValidationError, match=r"text 0 is 100,001 characters.*at most 100,000"):
        conform(text_spec(), np.array(["a" * (MAX_TEXT_CHARS + 1)], dtype=object))
