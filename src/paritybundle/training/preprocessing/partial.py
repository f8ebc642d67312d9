"""Preprocessing for some inputs: the ones it reads go through it, the others pass through to the model.

A model with an image and tabular columns, or text and numeric features: the preprocessing (a Pipeline on
the image, Columns on some columns, a tokenizer on the text, a scikit-learn transformer fitted on named
columns) is frozen for its inputs, and every other raw input reaches the model unchanged. In the frozen
graph a passed-through input is a graph input that is also a graph output of the same name, so the merge
connects it to the model input it names; the check compares it like any feature (it must be identical).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...bundle.manifest import PreprocessColumn, PreprocessStep
from ...errors import SpecError
from .pipeline import Preprocessor


class PartialPreprocess(Preprocessor):
    """``inner`` on the inputs it reads; ``passthrough`` inputs unchanged."""

    def __init__(self, inner: Preprocessor, passthrough: list[str]) -> None:
        self.inner, self.passthrough = inner, list(passthrough)
        self.source = inner.source
        # A tokenizer's features are keyword arguments, and so then are the inputs passed through; otherwise the
        # features reach the model by keyword where forward names them all, else in order (calling.py).
        self.features_by_keyword = True if getattr(inner, "features_by_keyword", False) else "where named"
        if hasattr(inner, "custom_ops"):  # the library its frozen graph needs (a tokenizer's)
            self.custom_ops = inner.custom_ops

    def _split(self, raw: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        inner = {name: value for name, value in raw.items() if name not in self.passthrough}
        passed = {name: np.ascontiguousarray(np.asarray(raw[name])) for name in self.passthrough}
        return inner, passed

    def prepare_raw(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inner, passed = self._split(raw)
        prepared = self.inner.prepare_raw(inner)
        kept = getattr(self.inner, "kept_rows", None)  # a tokenizer leaves out texts serving refuses
        if kept is not None:
            passed = {name: value[kept] for name, value in passed.items()}
        return {**prepared, **passed}

    def research(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inner, passed = self._split(raw)
        features = self.inner.research(inner)
        clash = set(features) & set(passed)
        if clash:
            raise SpecError(
                f"the preprocessing output {sorted(clash)[0]!r} has the name of an input it does not read; "
                "rename one of them."
            )
        return {**features, **passed}

    def to_onnx(self, raw: Mapping[str, np.ndarray], opset: int) -> Any:
        from onnx import helper

        from .graph import value_info

        inner, passed = self._split(raw)
        model = self.inner.to_onnx(inner, opset)
        for name, value in passed.items():
            declared = value_info(name, value.dtype, ["batch", *value.shape[1:]])
            model.graph.input.append(declared)
            model.graph.output.append(
                helper.make_tensor_value_info(name, declared.type.tensor_type.elem_type, ["batch", *value.shape[1:]])
            )
        return model

    def columns(self) -> list[PreprocessColumn]:
        # The inner columns feed the features no passed-through input claims (parity/localise.py).
        passing = PreprocessStep(kind="passthrough", nan="propagates")
        return self.inner.columns() + [
            PreprocessColumn(input=name, features=None, outputs=[name], steps=[passing]) for name in self.passthrough
        ]

    def replaces_nan(self, input_name: str) -> bool:
        return input_name not in self.passthrough and self.inner.replaces_nan(input_name)

    def __getattr__(self, name: str) -> Any:
        # A tokenizer's proof and rules are the inner preprocessor's (absent where it has none).
        if name in ("prove_frozen", "text_rules"):
            return getattr(self.__dict__["inner"], name)
        raise AttributeError(name)

    def probes(self, raw: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
        """The inner preprocessing's probe rows, each with the passed-through inputs of the first reference row."""
        from ..coverage import build_probes

        inner, passed = self._split(raw)
        if not hasattr(self.inner, "probes"):
            built = build_probes(raw, self.columns())
            return built.raw, built.reasons
        rows, reasons = self.inner.probes(inner)
        return {**rows, **{name: np.repeat(value[:1], len(reasons), axis=0) for name, value in passed.items()}}, reasons

    def __repr__(self) -> str:
        return f"{self.inner!r}; passed through to the model: {', '.join(self.passthrough)}"


def inputs_read(preprocessor: Preprocessor, offered: list[str]) -> list[str]:
    """Which of the ``offered`` raw inputs a preprocessor reads (all, where it cannot say)."""
    named = getattr(preprocessor, "input_names", None)  # Columns
    if named is None and hasattr(preprocessor, "input") and hasattr(preprocessor, "chain"):  # Pipeline
        named = [preprocessor.input]
    if named is None and getattr(preprocessor, "by_column", False):  # scikit-learn fitted on named columns
        named = [str(c) for c in preprocessor.transformer.feature_names_in_]  # type: ignore[attr-defined]
    if named is None and hasattr(preprocessor, "text"):  # a tokenizer
        named = [preprocessor.text]
    if named is None:
        return list(offered)
    missing = [name for name in named if name not in offered]
    if missing:
        raise SpecError(
            f"the preprocessing reads {', '.join(map(repr, missing))}, which reference_inputs does not hold "
            f"(it holds {', '.join(offered)})."
        )
    return list(named)
