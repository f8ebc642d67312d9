"""Input validation against a bundle's tensor specs: the one place these rules live.

``predict``, the reference checks and the V2 server (after decoding the wire format)
all hand their arrays here: names, dtypes, ranks, fixed dimensions, symbolic
dimensions shared between inputs, and NaN/infinity where a spec refuses them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..bundle.manifest import TensorSpec, TextRules
from ..errors import InputValidationError


def validate_inputs(
    specs: Sequence[TensorSpec],
    inputs: Mapping[str, Any] | np.ndarray,
    *,
    check_finite: bool = True,
    model: str = "this model",
    bounds: Mapping[str, tuple[int, int]] | None = None,
    check_utf8: bool = True,
) -> dict[str, np.ndarray]:
    """Check names, dtypes and shapes against ``specs``; return arrays in spec dtypes, in spec order.

    A single array is accepted for a single-input model. Values of the same kind are
    converted (float64 -> float32); a different kind is refused. ``check_finite=False``
    skips the NaN/inf scan (for hash-verified references, whose ``allow_nonfinite`` flags
    were derived from those very arrays). ``model`` names the model in messages. ``bounds``:
    inclusive value ranges of integer inputs that index a table (see :mod:`.index_bounds`).
    ``check_utf8=False`` skips the per-string encoding scan, for strings decoded from UTF-8 (an Arrow
    column): decoding never yields a lone surrogate, the one thing the scan looks for.

    Raises:
        InputValidationError: naming the input and what is wrong.

    Example:
        >>> validate_inputs([TensorSpec(name="x", dtype="float32", shape=["batch", 2])], np.zeros((3, 2)))  # doctest: +SKIP
        {'x': array(..., dtype=float32)}
    """
    if not isinstance(inputs, Mapping):
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise InputValidationError(f"{model} takes {len(specs)} inputs ({names}); pass a mapping of name to array.")
        inputs = {specs[0].name: inputs}
    if len(inputs) != len(specs) or any(s.name not in inputs for s in specs):
        expected = [s.name for s in specs]
        missing = [n for n in expected if n not in inputs]
        if missing:
            raise InputValidationError(f"input {missing[0]!r} is missing; {model} takes {', '.join(expected)}.")
        unknown = [n for n in inputs if n not in expected]
        raise InputValidationError(f"input {unknown[0]!r} is not an input of {model}; it takes {', '.join(expected)}.")
    bound: dict[str, int] = {}
    bounds = bounds or {}
    return {
        spec.name: conform(spec, inputs[spec.name], bound, check_finite, bounds.get(spec.name), check_utf8)
        for spec in specs
    }


def from_columns(specs: Sequence[TensorSpec], inputs: Any) -> Any:
    """What a caller of ``predict`` hands over, in the layout the specs take: a pandas DataFrame as its
    columns (or, for a single input of that many features, as one matrix), and a 1-D column as
    ``[batch, 1]`` where the spec wants one feature per row. Anything else is returned as it is."""
    if hasattr(inputs, "columns") and hasattr(inputs, "to_numpy"):  # a DataFrame, without importing pandas
        names = [str(c) for c in inputs.columns]
        if (
            len(specs) == 1
            and specs[0].name not in names
            and len(specs[0].shape) == 2
            and specs[0].shape[1] == len(names)
        ):
            return {specs[0].name: inputs.to_numpy()}
        inputs = {name: inputs[column].to_numpy() for name, column in zip(names, inputs.columns, strict=True)}
    if isinstance(inputs, Mapping):
        by_name = {spec.name: spec for spec in specs}
        columns = {}
        for name, value in inputs.items():
            spec = by_name.get(name)
            if spec is not None and len(spec.shape) == 2 and spec.shape[1] == 1 and np.ndim(value) == 1:
                value = np.asarray(value).reshape(-1, 1)
            columns[name] = value
        return columns
    return inputs


def check_shape(spec: TensorSpec, shape: Sequence[int]) -> None:
    """``shape`` has the spec's rank and its fixed dimensions (judged before a request's data is decoded:
    a wrong shape is refused before any work is done for it)."""
    if len(shape) != len(spec.shape):
        raise InputValidationError(
            f"input {spec.name!r} must have {len(spec.shape)} dimensions {shape_text(spec.shape)}, "
            f"got shape {list(shape)}."
        )
    for axis, (dim, size) in enumerate(zip(spec.shape, shape, strict=True)):
        if isinstance(dim, int) and dim != size:
            raise InputValidationError(
                f"input {spec.name!r} must have shape {shape_text(spec.shape)}, got {list(shape)} "
                f"(dimension {axis} is {size}, expected {dim})."
            )
        if spec.max_dims and isinstance(dim, str) and dim in spec.max_dims and size > spec.max_dims[dim]:
            raise InputValidationError(
                f"input {spec.name!r} has {size} along {dim!r}, over this model's maximum of {spec.max_dims[dim]} "
                "(the longest its graph runs, found at export); shorten or truncate it."
            )


def conform(
    spec: TensorSpec,
    value: Any,
    bound: dict[str, int] | None = None,
    check_finite: bool = True,
    limits: tuple[int, int] | None = None,
    check_utf8: bool = True,
) -> np.ndarray:
    """One input against its spec (``bound``: symbolic dimension sizes seen so far, shared across inputs;
    ``limits``: the inclusive range of an integer input that indexes a table)."""
    bound = {} if bound is None else bound
    try:
        array = value if type(value) is np.ndarray else np.asarray(value)
    except Exception:
        raise InputValidationError(f"input {spec.name!r} cannot be read as an array.") from None
    if spec.dtype == "string":
        if array.dtype.kind not in "USO":
            raise InputValidationError(f"input {spec.name!r} must hold strings, got {array.dtype}.")
        array = array.astype(object)
        if check_utf8:
            _require_utf8(spec.name, array)
        if spec.text is not None:
            _refuse_unproven(spec.name, spec.text, array)
    else:
        target = _numpy_dtype(spec.dtype)
        if array.dtype != target:
            if array.dtype.kind in "USO" or not np.can_cast(array.dtype, target, casting="same_kind"):
                raise InputValidationError(
                    f"input {spec.name!r} must be {spec.dtype}, got {array.dtype}; convert it before sending."
                )
            array = array.astype(target)
    if limits is not None and array.size and array.dtype.kind in "iu":
        low, high = limits
        if array.min() < low or array.max() > high:
            raise InputValidationError(
                f"input {spec.name!r} has values outside {low}..{high}, the rows of the table the model looks "
                f"them up in (got {array.min()}..{array.max()})."
            )
    if check_finite and array.dtype.kind == "f" and not spec.allow_nonfinite and not np.isfinite(array).all():
        raise InputValidationError(f"input {spec.name!r} contains NaN or infinity, which this model does not accept.")
    check_shape(spec, array.shape)
    for dim, size in zip(spec.shape, array.shape, strict=True):
        if not isinstance(dim, int) and bound.setdefault(dim, size) != size:
            raise InputValidationError(
                f"input {spec.name!r} has {size} along {dim!r}, but another input has {bound[dim]}; "
                "all inputs must agree on it."
            )
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _require_utf8(name: str, strings: np.ndarray) -> None:
    """ONNX Runtime encodes strings as UTF-8; a lone surrogate (valid in JSON, not in UTF-8) would fail
    the whole call, and with it every request batched alongside."""
    for value in strings.reshape(-1):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InputValidationError(
                    f"input {name!r} holds a string that is not valid Unicode ({value!r}: a lone surrogate); "
                    "send text that encodes as UTF-8."
                ) from None


# The longest text a frozen tokenizer is given. Its graph splits a text into characters to normalise them:
# measured, 10 million characters took 5.6 s and 1.4 GB, so a 16 MiB body could take a server's memory; a
# classifier reads max_length tokens (hundreds), a few thousand characters.
MAX_TEXT_CHARS = 100_000


def _refuse_unproven(name: str, rules: TextRules, strings: np.ndarray) -> None:
    """Text holding a character the bundle's frozen tokenizer was not proven on (its export measured every
    character against research: training/preprocessing/text_alphabet.py) is refused, naming the character;
    so is empty text where the tokenizer gives it no tokens, and text past :data:`MAX_TEXT_CHARS`."""
    for row, value in enumerate(strings.reshape(-1)):
        why = text_refusal(rules, value) if isinstance(value, str) else None
        if why is not None:
            raise InputValidationError(f"input {name!r} text {row} {why}")


def text_refusal(rules: TextRules, text: str) -> str | None:
    """Why serving refuses ``text`` (the rest of a sentence whose subject is the text), or None: the one rule,
    also what export leaves out of a reference set, so a bundle never fails its own check on its texts."""
    if len(text) > MAX_TEXT_CHARS:
        return (
            f"is {len(text):,} characters; a text a frozen tokenizer reads is at most {MAX_TEXT_CHARS:,} "
            "characters when served (the model reads only its first tokens): send its beginning."
        )
    if rules.empty_refused and text == "":
        return (
            "is empty, which this bundle's tokenizer turns into no tokens at all: there is nothing for the model "
            "to read, and what it would answer is not what research computed; send text."
        )
    found = refused_pattern(rules.refused_chars).search(text)
    if found is None:
        return None
    char = found.group()
    shown = repr(char) if char.isprintable() else "a control character"
    return (
        f"holds {shown} (U+{ord(char):04X}) at offset {found.start()}, a character the bundle's frozen tokenizer "
        "was not proven to read as research's tokenizer does; remove or replace it before sending (bundle inspect "
        "lists the refused characters)."
    )


@functools.lru_cache(maxsize=8)
def refused_pattern(refused: str) -> re.Pattern[str]:
    """One character class of every refused run (``TensorSpec.refused_chars``): the search runs in C, a few
    hundred nanoseconds for a short text."""
    runs = (part.split("-") for part in refused.split(","))
    return re.compile("[" + "".join(f"\\U{int(a, 16):08x}-\\U{int(b, 16):08x}" for a, b in runs) + "]")


@functools.cache
def _numpy_dtype(name: str) -> np.dtype:
    # Building a dtype from its name costs about as much as the rest of a small request's checks.
    return np.dtype(name)


def shape_text(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
