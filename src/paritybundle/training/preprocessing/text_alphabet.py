"""Which characters the frozen tokenizer is proven to treat as research does, measured at export.

onnxruntime-extensions' operators are not the research tokenizer: measured on 0.15.2 with a BERT vocabulary,
they lower-case fewer characters (``Ⅻ``), treat some separators differently (U+2028) and, for a word holding a
character the vocabulary lacks, emit its known pieces and then ``[UNK]`` where research emits one ``[UNK]`` for
the whole word. So the export proves every character of Unicode planes 0-2 against research, each in four
contexts (alone, after, before and inside a word), 64 characters to a text, a failing text's characters then
one by one. Serving refuses text holding a character that failed or was never tested (above U+2FFFF, NUL,
surrogates), naming it: a proof that passes is then true for every text served.

What research's normaliser does to each character (:func:`normalisation`) is read from the research
tokenizer itself, and the frozen graph (:mod:`.tokenizer_graph`) applies it before the operators read the text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

# Planes 0-2: every script, symbol and emoji in use, and the CJK extensions; above them, nothing is proven.
TESTED_LIMIT = 0x30000
SURROGATES = (0xD800, 0xDFFF)
GROUP = 64


def tested_codepoints() -> list[int]:
    return [c for c in range(1, TESTED_LIMIT) if not SURROGATES[0] <= c <= SURROGATES[1]]


def normalisation(tokenizer: object) -> tuple[dict[str, str], str]:
    """What research's normaliser does to each character, read from the research tokenizer itself, as one
    character map for the frozen graph and a placeholder: a character it rewrites maps to what it becomes
    (lower-casing, accents, whitespace to a space), one it splits words at (punctuation, CJK) to itself between
    spaces, one it removes (controls, combining marks, U+FFFD) to the placeholder, which the graph then deletes
    (the operator's map holds no empty value). The placeholder is itself a character research removes (U+E000,
    a private-use character, where it is), so text holding it is treated alike.

    Regular expressions over these classes would say the same, but the operators compile their pattern on
    every call: with classes of thousands of ranges, 0.5 ms per request (measured), against 0.1 ms for the map.
    """
    backend = tokenizer.backend_tokenizer  # type: ignore[attr-defined]
    normalize, pre_tokenize = backend.normalizer.normalize_str, backend.pre_tokenizer.pre_tokenize_str
    mapping: dict[str, str] = {}
    removed: list[str] = []
    for code in tested_codepoints():
        char = chr(code)
        alone = normalize(char)
        if not alone:
            removed.append(char)
            continue
        if alone.strip() and len(pre_tokenize(normalize(f"a{char}a"))) != 1:
            alone = f" {alone.strip()} "  # research splits words here
        # The operator's map is "key<TAB>value" lines: tab and line feed become spaces by a regex instead.
        if alone != char and char not in "\t\n":
            mapping[char] = alone
    placeholder = "\ue000" if "\ue000" in removed else removed[0]
    mapping.update({char: placeholder for char in removed if char != placeholder and char not in "\t\n"})
    return mapping, placeholder


def ranges(codes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted code points as inclusive ``(first, last)`` runs."""
    runs: list[tuple[int, int]] = []
    for code in sorted(codes):
        if runs and code == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], code)
        else:
            runs.append((code, code))
    return runs


def encode_refused(runs: Sequence[tuple[int, int]]) -> str:
    """The manifest's form: ``0-0,216b-216b,...`` (hex, inclusive)."""
    return ",".join(f"{a:x}-{b:x}" for a, b in runs)


def decode_refused(text: str) -> list[tuple[int, int]]:
    runs = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        runs.append((int(first, 16), int(last, 16)))
    return runs


def contexts(char: str) -> str:
    return f"{char} a{char} {char}a a{char}a"


def prove_alphabet(
    frozen: Callable[[list[str]], list[list[int]]],
    research: Callable[[list[str]], list[list[int]]],
    codes: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """The code points (as runs) whose texts the frozen tokenizer does not tokenize as research does, with
    everything untested: NUL, the surrogates, and all above :data:`TESTED_LIMIT`.

    ``frozen`` and ``research`` map texts to token ids without truncation.
    """
    codes = list(codes if codes is not None else tested_codepoints())
    groups = [codes[k : k + GROUP] for k in range(0, len(codes), GROUP)]
    texts = [" ".join(contexts(chr(c)) for c in group) for group in groups]
    suspects = [
        c for group, same in zip(groups, _agree(frozen, research, texts), strict=True) if not same for c in group
    ]
    refused = [
        c
        for c, same in zip(suspects, _agree(frozen, research, [contexts(chr(c)) for c in suspects]), strict=True)
        if not same
    ]
    return ranges([0, *range(SURROGATES[0], SURROGATES[1] + 1), *refused, *range(TESTED_LIMIT, 0x110000)])


def _agree(
    frozen: Callable[[list[str]], list[list[int]]], research: Callable[[list[str]], list[list[int]]], texts: list[str]
) -> list[bool]:
    if not texts:
        return []
    return [list(a) == list(b) for a, b in zip(frozen(texts), research(texts), strict=True)]


def frozen_ids(session: object, text_input: str) -> Callable[[list[str]], list[list[int]]]:
    """Token ids of a tokenizer graph's session (padded rows cut at their attention mask), 256 texts a run."""
    names = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]

    def run(texts: list[str]) -> list[list[int]]:
        found: list[list[int]] = []
        for start in range(0, len(texts), 256):
            chunk = np.array(texts[start : start + 256], dtype=object)
            outputs = dict(zip(names, session.run(None, {text_input: chunk}), strict=True))  # type: ignore[attr-defined]
            ids, mask = outputs["input_ids"], outputs["attention_mask"].astype(bool)
            found += [row[keep].tolist() for row, keep in zip(ids, mask, strict=True)]
        return found

    return run


def describe_refused(refused: str) -> str:
    """A line for people: how many characters below U+30000 are refused, the first few named."""
    runs = [
        (a, b)
        for a, b in decode_refused(refused)
        if a < TESTED_LIMIT and not (a, b) == (0, 0) and not (a, b) == SURROGATES
    ]
    count = sum(min(b, TESTED_LIMIT - 1) - a + 1 for a, b in runs)
    shown = ", ".join(f"U+{a:04X}" if a == b else f"U+{a:04X}-U+{min(b, TESTED_LIMIT - 1):04X}" for a, b in runs[:8])
    more = f" and {len(runs) - 8} more runs" if len(runs) > 8 else ""
    return f"NUL, surrogates, everything above U+2FFFF, and {count} characters below it" + (
        f": {shown}{more}" if count else ""
    )
