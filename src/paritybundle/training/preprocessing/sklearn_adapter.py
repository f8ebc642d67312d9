"""A fitted scikit-learn transformer, Pipeline or ColumnTransformer as a :class:`Preprocessor`,
frozen with skl2onnx (the ``sklearn`` extra)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...bundle.manifest import PreprocessColumn, PreprocessStep
from ...errors import SpecError, UsageError
from .fitted import json_value
from .pipeline import Preprocessor


def _fitted_state(estimator: Any) -> dict[str, Any]:
    """scikit-learn's convention: fitted attributes end with ``_`` (``mean_``, ``categories_``); beside them
    the settings it was made with (``strategy``, ``with_mean``, ``handle_unknown``), so that ``bundle diff``
    shows an edit of either (a setting changed without a fitted value moving was invisible)."""
    state: dict[str, Any] = {"class": type(estimator).__name__}
    settings = estimator.get_params(deep=False) if hasattr(estimator, "get_params") else {}
    for name in sorted(settings):
        value = json_value(settings[name])
        if value is not ... and _finite(value):  # np.nan as missing_values: no NaN in the manifest's JSON
            state[name] = value
    for name in sorted(vars(estimator)):
        if name.endswith("_") and not name.startswith("_") and name not in ("n_features_in_", "feature_names_in_"):
            value = json_value(getattr(estimator, name))
            if value is not ...:
                state[name] = value
    return state


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _sklearn_steps(estimator: Any) -> list[PreprocessStep]:
    """One step per stage of a scikit-learn Pipeline (or the estimator itself)."""
    stages = [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    return [
        PreprocessStep(
            kind=type(s).__name__[:64],
            nan="replaced" if type(s).__name__ in _IMPUTERS else "propagates",
            params=_fitted_state(s),
        )
        for s in stages
        if s not in (None, "passthrough")
    ]


_IMPUTERS = {"SimpleImputer", "KNNImputer", "IterativeImputer"}


class SklearnPreprocess(Preprocessor):
    """A fitted scikit-learn transformer, Pipeline or ColumnTransformer, converted with skl2onnx.

    Inputs follow skl2onnx's convention: one 2-D array, or (for a transformer fitted on a
    DataFrame, e.g. a ColumnTransformer selecting columns by name) one ``[N, 1]`` input
    per column. Numbers travel as float32 (int64 for integer columns), categories as strings.
    """

    source = "scikit-learn"

    def __init__(self, transformer: Any, output: str = "features") -> None:
        if not hasattr(transformer, "transform"):
            raise SpecError(f"{type(transformer).__name__} has no transform(); pass a fitted scikit-learn transformer.")
        self.transformer, self._output = transformer, output

    @property
    def by_column(self) -> bool:
        return hasattr(self.transformer, "feature_names_in_")

    def prepare_raw(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw inputs in skl2onnx's layout: columns ``[N, 1]``, floats as float32."""
        prepared = {}
        for name, array in raw.items():
            array = np.asarray(array)
            if self.by_column and array.ndim == 1:
                array = array[:, None]
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
            elif array.dtype.kind in "iu":
                array = array.astype(np.int64)
            prepared[name] = array
        if self.by_column:
            expected = [str(c) for c in self.transformer.feature_names_in_]
            if sorted(prepared) != sorted(expected):
                raise SpecError(
                    f"the transformer was fitted on columns {expected}; reference_inputs has {list(prepared)}."
                )
            prepared = {name: prepared[name] for name in expected}
        elif len(prepared) != 1:
            raise SpecError(
                "a transformer fitted on an array takes one reference input; fit it on a DataFrame "
                "to take named columns."
            )
        return prepared

    def _research_input(self, raw: Mapping[str, np.ndarray]) -> Any:
        if not self.by_column:
            return next(iter(raw.values()))
        try:
            import pandas as pd
        except ImportError:
            raise UsageError(
                "a scikit-learn transformer fitted on named columns needs pandas; pip install 'paritybundle[sklearn]'."
            ) from None
        return pd.DataFrame({name: np.asarray(a).reshape(len(a), -1)[:, 0] for name, a in raw.items()})

    def research(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.transformer.transform(self._research_input(raw))
        if hasattr(values, "toarray"):
            values = values.toarray()
        return {self._output: np.asarray(values, dtype=np.float32)}

    def to_onnx(self, raw: Mapping[str, np.ndarray], opset: int) -> Any:
        try:
            from skl2onnx import to_onnx
            from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
        except ImportError:
            raise UsageError(
                "scikit-learn preprocessing is converted with skl2onnx, which is not installed; "
                "pip install 'paritybundle[sklearn]'."
            ) from None
        types = []
        for name, array in raw.items():
            shape = [None, *array.shape[1:]]
            kind = {"f": FloatTensorType, "i": Int64TensorType, "U": StringTensorType}.get(array.dtype.kind)
            if kind is None:
                raise SpecError(f"reference input {name!r} of dtype {array.dtype} has no skl2onnx type.")
            types.append((name, kind(shape)))
        try:
            converted = to_onnx(self.transformer, initial_types=types, target_opset={"": opset, "ai.onnx.ml": 3})
        except Exception as exc:  # skl2onnx raises many types for unsupported estimators/options
            raise SpecError(
                f"skl2onnx cannot convert {type(self.transformer).__name__}: {type(exc).__name__}: {exc}"
            ) from None
        outputs = list(converted.graph.output)
        if len(outputs) != 1:
            raise SpecError(
                f"the converted transformer has {len(outputs)} outputs; paritybundle expects one feature array."
            )
        old = outputs[0].name
        for node in converted.graph.node:
            node.output[:] = [self._output if o == old else o for o in node.output]
            node.input[:] = [self._output if i == old else i for i in node.input]
        outputs[0].name = self._output
        return converted

    def columns(self) -> list[PreprocessColumn]:
        transformer = self.transformer
        if hasattr(transformer, "transformers_") and hasattr(transformer, "output_indices_"):
            described = []
            for name, estimator, selected in transformer.transformers_:
                block = transformer.output_indices_.get(name)
                if estimator == "drop" or block is None or block.stop <= block.start:
                    continue
                steps = [] if estimator == "passthrough" else _sklearn_steps(estimator)
                names = [str(c) for c in np.atleast_1d(selected)]
                if not self.by_column:
                    names = [f"input[:, {c}]" for c in names]
                described += [PreprocessColumn(input=n, features=[block.start, block.stop], steps=steps) for n in names]
            return described
        inputs = [str(c) for c in getattr(transformer, "feature_names_in_", ["input"])]
        return [PreprocessColumn(input=n, features=None, steps=_sklearn_steps(transformer)) for n in inputs]

    def replaces_nan(self, input_name: str) -> bool:
        return any(
            step.nan == "replaced" for column in self.columns() if column.input == input_name for step in column.steps
        )

    def __repr__(self) -> str:
        return " ".join(repr(self.transformer).split())
