"""A Hugging Face tokenizer as a :class:`Preprocessor`: raw text in, the model's token inputs out.

Research runs the tokenizer itself (transformers, with ``padding="max_length"`` and truncation at the
bundle's ``max_length``); the bundle freezes it as onnxruntime-extensions operators
(:mod:`.tokenizer_graph`). Which tokenizers can be frozen is read from the tokenizer's own description
(the ``tokenizers`` JSON behind every fast tokenizer), and anything else is refused naming what is not
supported, before any work: a bundle must never fail its own check. Token-for-token parity over the
reference texts and :data:`PROBES` is then proven at export (:meth:`TokenizerPreprocess.prove_frozen`).

transformers is never imported here: the tokenizer object is the user's, only its methods are called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...bundle.manifest import PreprocessColumn, PreprocessStep, TextRules
from ...errors import ExportParityError, SpecError
from ...runtime.validation import MAX_TEXT_CHARS, text_refusal
from .pipeline import Preprocessor
from .text_alphabet import GROUP, describe_refused, encode_refused, frozen_ids, normalisation, prove_alphabet

log = logging.getLogger("paritybundle.export")

EXTENSIONS = "onnxruntime-extensions"
# What the frozen graphs can produce; a tokenizer whose model reads anything else is refused.
TOKEN_FEATURES = ("input_ids", "token_type_ids", "attention_mask")
# A tokenizer with no usable model_max_length (transformers' "unset" is 1e30) and a model with no position
# table: the longest a row may be is then unknown, and padding every row to it would be unbounded.
_UNSET_LENGTH = 10**6

# Texts that exercise what a reference set of ordinary sentences does not, as research's tokenizer and the
# frozen one must agree on them (each also becomes a reference row, so every check re-proves it).
PROBES: dict[str, str] = {
    "casing": "The Quick BROWN Fox",
    "accents": "café naïve Ünïcode résumé",
    "unicode normalisation": "e\u0301 combining, \ufb01 ligature, \u216b numeral",
    "whitespace": "  tab\there\r\nnew  line\u00a0nbsp  ",
    "control characters": "bell\x07 escape\x1b zero\u200bwidth \ufffdreplaced",
    "unknown words": "zqxjv qwzzk xxyzy",
    "empty text": "",
    "CJK": "猫が好きです 我喜欢猫 고양이",
    "emoji": "emoji 😀 👍🏽 🇫🇷",
    "long word": "x" * 150,
}


@dataclass(frozen=True)
class TokenizerSettings:
    """What the frozen tokenizer does, recorded in the manifest and compared by ``bundle diff``."""

    family: str  # "wordpiece" (BERT family) or "byte-level-bpe" (GPT-2 family)
    tokenizer_class: str
    lowercase: bool
    strip_accents: bool
    chinese_chars: bool
    subword_prefix: str
    max_length: int  # rows are truncated and padded to this many tokens
    truncation_side: str
    padding_side: str
    pad_id: int
    special_tokens: dict[str, str] = field(default_factory=dict)
    vocab_size: int = 0
    vocab_sha256: str = ""
    model_max_positions: int | None = None
    features: tuple[str, ...] = ()
    max_word_chars: int = 100  # WordPiece: a longer word is one [UNK]
    unk_id: int | None = None  # the unknown token's id (WordPiece), for drift's unknown-token share

    def recorded(self) -> dict[str, Any]:
        values = asdict(self)
        values["features"] = list(self.features)
        return values


class TokenizerPreprocess(Preprocessor):
    """A fast Hugging Face tokenizer frozen with onnxruntime-extensions."""

    source = "transformers"
    custom_ops = (EXTENSIONS,)
    # The model reads the features by keyword (``input_ids=...``), as transformers models are called.
    features_by_keyword = True

    def __init__(self, tokenizer: Any, input_names: list[str], model: Any, text: str | None = None) -> None:
        if text is None:
            if len(input_names) != 1 and "text" not in input_names:
                raise SpecError(
                    f"a tokenizer reads one text input, and reference_inputs has {len(input_names)} "
                    f"({', '.join(input_names)}) with none named 'text'; name the text input 'text'."
                )
            text = input_names[0] if len(input_names) == 1 else "text"
        self.tokenizer, self.text = tokenizer, text
        self.kept_rows: list[int] | None = None  # the reference rows prepare_raw kept
        self.settings, self._vocab, self._merges = read_settings(tokenizer, model)
        self._normalized: dict[str, str] = {}
        self._placeholder = ""
        if self.settings.family == "wordpiece":
            self._normalized, self._placeholder = normalisation(tokenizer)
        # What serving refuses (text_alphabet.py), proven on first use; probes left out for it.
        self.refused_chars: str | None = None
        self.refused_probes: list[str] = []

    def prepare_raw(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The reference texts, less those serving refuses (:func:`~paritybundle.runtime.validation.text_refusal`:
        a character the frozen tokenizer is not proven on, too long, or empty where it gives no tokens), which
        could not be checked: each dropped one is logged."""
        values = np.asarray(raw[self.text])
        if values.ndim != 1 or (values.dtype.kind not in "USO") or not all(isinstance(v, str) for v in values):
            raise SpecError(f"reference input {self.text!r} must be a list of strings (one text per sample).")
        rules = self.text_rules()
        refusals = [text_refusal(rules, str(value)) for value in values]
        for row, why in [(row, why) for row, why in enumerate(refusals) if why is not None][:20]:
            log.warning("reference text %d %s; it is left out of the reference set.", row, why.split(";")[0])
        keep = [row for row, why in enumerate(refusals) if why is None]
        if not keep:
            raise SpecError(
                "serving would refuse every reference text (a character the frozen tokenizer was not proven "
                f"on, over {MAX_TEXT_CHARS:,} characters, or empty); pass texts as production sends them."
            )
        self.kept_rows = keep
        return {self.text: values[keep].astype(object)}

    def _prove_alphabet(self) -> str:
        """Prove every character once (:func:`.text_alphabet.prove_alphabet`): sets :attr:`refused_chars`."""
        if self.refused_chars is None:
            from ...runtime.session import SessionSettings, create_session

            settings = SessionSettings(custom_ops=self.custom_ops)
            # The same graph without truncation (a character's texts run past max_length).
            unbounded = dataclasses.replace(self.settings, max_length=GROUP * 40 + 2)
            graph = self._graph(unbounded, ["input_ids", "attention_mask"], 18)
            session = create_session(graph.SerializeToString(), settings, label="the frozen tokenizer", at_export=True)

            def research(texts: list[str]) -> list[list[int]]:
                return self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]

            self.refused_chars = encode_refused(prove_alphabet(frozen_ids(session, self.text), research))
        return self.refused_chars

    def research(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        encoded = self.tokenizer(
            [str(t) for t in raw[self.text]],
            padding="max_length",
            truncation=True,
            max_length=self.settings.max_length,
            return_tensors="np",
        )
        return {name: np.asarray(encoded[name], dtype=np.int64) for name in self.settings.features}

    def to_onnx(self, raw: Mapping[str, np.ndarray], opset: int) -> Any:
        return self._graph(self.settings, list(self.settings.features), opset)

    def _graph(self, settings: TokenizerSettings, features: list[str], opset: int) -> Any:
        from .tokenizer_graph import byte_level_graph, wordpiece_graph

        if settings.family == "wordpiece":
            return wordpiece_graph(
                settings, self._vocab, self.text, features, opset, self._normalized, self._placeholder
            )
        return byte_level_graph(
            settings,
            json.dumps(dict(zip(self._vocab, range(len(self._vocab)), strict=True)), ensure_ascii=False),
            self._merges,
            self.text,
            features,
            opset,
        )

    def probes(self, raw: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
        """The probe texts as raw rows, and why each exists (one longer than ``max_length`` included); a probe
        serving refuses is left out, its reason saying so."""
        texts = dict(PROBES)
        words = " ".join(["the quick brown fox"] * (self.settings.max_length // 2 + 2))
        texts[f"past the maximum length ({self.settings.max_length} tokens)"] = words
        rules = self.text_rules()
        refusals = {name: text_refusal(rules, text) for name, text in texts.items()}
        self.refused_probes = [
            f"text probe: {name} (refused at serving: it {why.split(';')[0].split(',')[0]})"
            for name, why in refusals.items()
            if why is not None
        ]
        kept = {name: text for name, text in texts.items() if refusals[name] is None}
        return {self.text: np.array(list(kept.values()), dtype=object)}, [f"text probe: {name}" for name in kept]

    def text_rules(self) -> TextRules:
        """What serving refuses: characters not proven, and empty text where it gives no tokens."""
        empty = self.tokenizer([""], add_special_tokens=True)["input_ids"][0]
        return TextRules(refused_chars=self._prove_alphabet(), empty_refused=not empty)

    def prove_frozen(
        self, raw: Mapping[str, np.ndarray], features: Mapping[str, np.ndarray], reasons: list[str], session: Any
    ) -> None:
        """Token for token: the frozen graph's ``session`` on every reference text and probe against research's
        ids, masks and token types (``reasons``: why each probe row exists, after the reference rows).

        Raises:
            ExportParityError: the first differing text, the feature and the first differing position.
        """
        texts = raw[self.text]
        feeds = {i.name: raw[i.name] for i in session.get_inputs()}  # inputs passed through to the model too
        frozen = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        first_probe = len(texts) - len(reasons)
        for name in self.settings.features:
            differs = np.flatnonzero((frozen[name] != features[name]).any(axis=1))
            if differs.size:
                row = int(differs[0])
                position = int(np.flatnonzero(frozen[name][row] != features[name][row])[0])
                which = f"reference text {row}" if row < first_probe else reasons[row - first_probe]
                shown = repr(str(texts[row]))
                shown = shown if len(shown) <= 120 else shown[:117] + "..."
                raise ExportParityError(
                    f"the frozen tokenizer disagrees with {self.settings.tokenizer_class} on {which} ({shown}): "
                    f"{name} at position {position} is {int(frozen[name][row][position])} where research has "
                    f"{int(features[name][row][position])}, so no bundle was written. The tokenizer's settings "
                    "(normalisation, special or added tokens) are ones onnxruntime-extensions does not reproduce."
                )

    def columns(self) -> list[PreprocessColumn]:
        params = self.settings.recorded()
        if self.refused_chars is not None:
            params["refused_characters"] = describe_refused(self.refused_chars)
            params["probes_left_out"] = self.refused_probes
        step = PreprocessStep(kind="tokenizer", nan="none", params=params)
        return [PreprocessColumn(input=self.text, features=None, steps=[step])]

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"{s.tokenizer_class} ({s.family}, {'lower-cased' if s.lowercase else 'cased'}, "
            f"max_length={s.max_length}, padding {s.padding_side}) frozen with {EXTENSIONS}"
        )


def is_tokenizer(value: Any) -> bool:
    """A Hugging Face tokenizer (duck-typed: transformers is not imported)."""
    return hasattr(value, "model_input_names") and hasattr(value, "convert_tokens_to_ids") and callable(value)


def read_settings(tokenizer: Any, model: Any) -> tuple[TokenizerSettings, list[str], str]:
    """The settings, the vocabulary (by id) and the BPE merges, or a refusal naming what is unsupported.

    Raises:
        SpecError: a tokenizer the frozen graph cannot reproduce.
    """
    name = type(tokenizer).__name__
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SpecError(
            f"{name} is a slow (Python) tokenizer, which cannot be frozen; load the fast one "
            "(AutoTokenizer.from_pretrained(..., use_fast=True))."
        )
    described = json.loads(backend.to_str())
    kind = (described.get("model") or {}).get("type")
    pre = (described.get("pre_tokenizer") or {}).get("type")
    if kind == "WordPiece" and pre == "BertPreTokenizer":
        family = "wordpiece"
    elif kind == "BPE" and pre == "ByteLevel":
        family = "byte-level-bpe"
    else:
        what = {
            "Unigram": "a SentencePiece Unigram model (T5, XLM-R, ALBERT)",
            "BPE": f"a BPE model with a {pre or 'missing'} pre-tokenizer (SentencePiece BPE, e.g. Llama)",
        }.get(str(kind), f"a {kind} model")
        raise SpecError(
            f"{name} is {what}; paritybundle freezes WordPiece (BERT family) and byte-level BPE "
            "(GPT-2 family) tokenizers, so tokenize this one outside the bundle and export the model "
            "on token ids."
        )
    vocab = _vocabulary(name, described["model"]["vocab"])
    normalizer = described.get("normalizer") or {}
    special = {
        "unk": tokenizer.unk_token,
        "sep": tokenizer.sep_token,
        "cls": tokenizer.cls_token,
        "pad": tokenizer.pad_token,
        "mask": tokenizer.mask_token,
    }
    special = {k: str(v) for k, v in special.items() if v is not None}
    if family == "wordpiece":
        if normalizer.get("type") != "BertNormalizer" or not normalizer.get("clean_text", True):
            raise SpecError(
                f"{name} normalises text with {normalizer.get('type') or 'nothing'} "
                f"{'(clean_text off)' if normalizer else ''}; the frozen WordPiece tokenizer reproduces "
                "BERT's normaliser with clean_text on."
            )
        _require_template(
            name, described.get("post_processor"), tokenizer, [special.get("cls"), None, special.get("sep")]
        )
        lowercase = bool(normalizer.get("lowercase"))
        strip = normalizer.get("strip_accents")
        strip_accents = lowercase if strip is None else bool(strip)
        chinese = bool(normalizer.get("handle_chinese_chars", True))
        prefix = described["model"].get("continuing_subword_prefix") or "##"
        merges = ""
    else:
        if normalizer:
            raise SpecError(
                f"{name} normalises text ({normalizer.get('type')}); the frozen byte-level BPE tokenizer "
                "reproduces GPT-2's, which has none."
            )
        if (described.get("pre_tokenizer") or {}).get("add_prefix_space"):
            raise SpecError(
                f"{name} adds a prefix space; the frozen byte-level BPE tokenizer reproduces GPT-2's, "
                "which does not (set add_prefix_space=False)."
            )
        _require_template(name, described.get("post_processor"), tokenizer, [None])
        lowercase = strip_accents = chinese = False
        prefix = ""
        merges = "\n".join(m if isinstance(m, str) else " ".join(m) for m in described["model"].get("merges", []))
    specials = set(tokenizer.all_special_tokens)
    added = [t["content"] for t in described.get("added_tokens", []) if t["content"] not in specials]
    if added:
        raise SpecError(
            f"{name} has added tokens ({', '.join(map(repr, added[:5]))}) that the frozen tokenizer "
            "would split as words; export without them or tokenize outside the bundle."
        )
    if tokenizer.truncation_side != "right":
        raise SpecError(
            f"{name} truncates on the {tokenizer.truncation_side}; the frozen tokenizer truncates on the "
            "right (set tokenizer.truncation_side = 'right')."
        )
    if family == "byte-level-bpe" and tokenizer.padding_side != "right":
        raise SpecError(
            f"{name} pads on the {tokenizer.padding_side}; the frozen byte-level BPE tokenizer pads on the "
            "right (set tokenizer.padding_side = 'right' for a classifier)."
        )
    if tokenizer.pad_token_id is None:
        raise SpecError(
            f"{name} has no pad token, and every row is padded to max_length; set one "
            "(tokenizer.pad_token = tokenizer.eos_token for GPT-2, as research's batches need too)."
        )
    positions = _max_positions(model)
    declared = int(tokenizer.model_max_length) if tokenizer.model_max_length < _UNSET_LENGTH else None
    lengths = [n for n in (declared, positions) if n]
    if not lengths:
        raise SpecError(
            f"{name} has no model_max_length and the model no position table; set "
            "tokenizer.model_max_length to the length research truncates at."
        )
    features = tuple(n for n in tokenizer.model_input_names if n in TOKEN_FEATURES)
    unknown = [n for n in tokenizer.model_input_names if n not in TOKEN_FEATURES]
    if unknown or "input_ids" not in features:
        raise SpecError(
            f"{name} gives the model {', '.join(tokenizer.model_input_names)}; the frozen tokenizer "
            f"gives {', '.join(TOKEN_FEATURES)}."
        )
    digest = hashlib.sha256("\n".join(vocab).encode() + b"\0" + merges.encode()).hexdigest()
    settings = TokenizerSettings(
        family=family,
        tokenizer_class=name,
        lowercase=lowercase,
        strip_accents=strip_accents,
        chinese_chars=chinese,
        subword_prefix=prefix,
        max_length=min(lengths),
        truncation_side="right",
        padding_side=tokenizer.padding_side,
        pad_id=int(tokenizer.pad_token_id),
        special_tokens=special,
        vocab_size=len(vocab),
        vocab_sha256=digest,
        model_max_positions=positions,
        features=features,
        max_word_chars=int(described["model"].get("max_input_chars_per_word") or 100),
        unk_id=int(tokenizer.unk_token_id) if family == "wordpiece" and tokenizer.unk_token_id is not None else None,
    )
    return settings, vocab, merges


def _vocabulary(name: str, vocab: Mapping[str, int]) -> list[str]:
    """Tokens by id; the frozen tokenizer numbers them by position, so ids must be 0..V-1, each once."""
    ordered = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise SpecError(
            f"{name}'s vocabulary ids are not 0..{len(ordered) - 1}, each once; the frozen tokenizer "
            "numbers tokens by line, so it would renumber them."
        )
    tokens = [t for t, _ in ordered]
    if any("\n" in t for t in tokens):
        raise SpecError(
            f"{name}'s vocabulary holds a token with a line break, which the frozen tokenizer's "
            "one-token-per-line vocabulary cannot hold."
        )
    return tokens


def _require_template(name: str, processor: Any, tokenizer: Any, shape: list[str | None]) -> None:
    """The special tokens around one text: ``shape`` lists them, None standing for the text."""
    found: list[str | None] = []
    kind = (processor or {}).get("type")
    if kind == "TemplateProcessing":
        for piece in processor.get("single", []):
            found.append(piece["SpecialToken"]["id"] if "SpecialToken" in piece else None)
    elif kind == "BertProcessing":
        found = [processor["cls"][0], None, processor["sep"][0]]
    elif kind in (None, "ByteLevel"):
        found = [None]
    else:
        raise SpecError(f"{name} adds special tokens with {kind}, which the frozen tokenizer does not reproduce.")
    if found != shape:
        shown = lambda tokens: " ".join("<text>" if t is None else t for t in tokens)  # noqa: E731
        raise SpecError(f"{name} frames a text as {shown(found)}; the frozen tokenizer frames it as {shown(shape)}.")


def _max_positions(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for attribute in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
