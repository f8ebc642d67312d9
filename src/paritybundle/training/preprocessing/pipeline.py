"""Preprocessing as users write it: a :class:`Pipeline` of steps on one input, or
:class:`Columns` (named raw inputs of mixed types, each with its own steps,
concatenated into one feature matrix).

Both implement :class:`Preprocessor`, the interface export uses for every kind of
preprocessing (these, a fitted scikit-learn transformer, a ``torch.nn.Module``):
research outputs in numpy/torch, the frozen ONNX graph, and a description of the
fitted state for the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...bundle.manifest import PreprocessColumn, Preprocessing, PreprocessSource, PreprocessStep, TensorSpec
from ...errors import SpecError
from .graph import GraphBuilder, make_model, value_info
from .steps import Step


class Preprocessor:
    """What export needs from any preprocessing.

    ``source`` names where it came from (``paritybundle``, ``scikit-learn``, ``torch``).
    """

    source: PreprocessSource = "paritybundle"

    def prepare_raw(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw reference inputs in the layout the frozen graph takes (default: as given)."""
        return dict(raw)

    def research(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The features the research path computes from raw inputs: output name -> array."""
        raise NotImplementedError

    def to_onnx(self, raw: Mapping[str, np.ndarray], opset: int) -> Any:
        """The frozen graph: inputs named and typed like ``raw``, one output per feature array."""
        raise NotImplementedError

    def columns(self) -> list[PreprocessColumn]:
        """Per raw input: its steps and fitted statistics, and its slice of the features."""
        raise NotImplementedError

    def replaces_nan(self, input_name: str) -> bool:
        """Whether a missing value (NaN) in this raw input is handled (then serving accepts it)."""
        return False

    def describe(self, features: list[TensorSpec]) -> Preprocessing:
        return Preprocessing(
            source=self.source, description=repr(self)[:4096], features=features, columns=self.columns()
        )


class _Chain:
    """The steps of one raw input, in order."""

    def __init__(self, name: str, steps: Sequence[Step] | Step) -> None:
        steps = [steps] if isinstance(steps, Step) else list(steps)
        for step in steps:
            if not isinstance(step, Step):
                raise SpecError(
                    f"preprocessing for {name!r} holds {step!r}, which is not a paritybundle.preprocess "
                    "step; use Standardize(), OneHot(), Resize(...), ..."
                )
        self.name, self.steps = name, steps

    @property
    def takes(self) -> str:
        return self.steps[0].takes if self.steps else "numbers"

    def prepare(self, raw: Any) -> np.ndarray:
        """The raw input as the first step reads it (the graph does the same in :meth:`to_onnx`)."""
        array = np.asarray(raw)
        if self.takes == "strings":
            if array.dtype.kind not in "USO":
                raise SpecError(
                    f"input {self.name!r} starts with a category step but holds {array.dtype}, not strings."
                )
            if array.dtype.kind == "O" and not all(isinstance(v, str) for v in array.ravel()):
                raise SpecError(
                    f"input {self.name!r} holds values that are not strings (e.g. None or NaN); "
                    "give missing categories a string of their own, such as ''."
                )
            array = array.astype(str)
        elif self.takes == "images":
            if array.dtype != np.uint8 or array.ndim != 4:
                raise SpecError(
                    f"input {self.name!r} must be uint8 images [N, H, W, C] for {self.steps[0]!r}; "
                    f"got {array.dtype} of shape {list(array.shape)}."
                )
            return array
        else:
            if array.dtype.kind not in "biuf":
                raise SpecError(f"input {self.name!r} must hold numbers, got {array.dtype}.")
            array = array.astype(np.float32)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 and self.takes != "images":
            raise SpecError(f"input {self.name!r} must be [N] or [N, features], got shape {list(array.shape)}.")
        return array

    def fit(self, raw: Any) -> None:
        x = self.prepare(raw)
        for step in self.steps:
            step.fit(x)
            x = step.transform(x)

    def transform(self, raw: Any) -> np.ndarray:
        x = self.prepare(raw)
        for step in self.steps:
            x = step.transform(x)
        return x

    def to_onnx(self, graph: GraphBuilder, raw: np.ndarray) -> str:
        x = self.name
        if self.takes == "numbers" and raw.dtype != np.float32:
            x = graph.node("Cast", [x], f"{self.name}/float", to=1)  # TensorProto.FLOAT
        if raw.ndim == 1:
            x = graph.node(
                "Unsqueeze", [x, graph.constant([1], f"{self.name}/column_axis", np.int64)], f"{self.name}/column"
            )
        for position, step in enumerate(self.steps):
            x = step.to_onnx(graph, x, f"{self.name}/{position}_{step.kind}")
        return x

    def replaces_nan(self) -> bool:
        return any(step.nan == "replaced" for step in self.steps)

    def describe(self, features: list[int] | None) -> PreprocessColumn:
        return PreprocessColumn(
            input=self.name,
            features=features,
            steps=[PreprocessStep(kind=step.kind, nan=step.nan, params=step.describe()) for step in self.steps],
        )


def _single(data: Any, name: str) -> Any:
    if isinstance(data, Mapping):
        if list(data) != [name]:
            raise SpecError(f"this pipeline reads one input named {name!r}; got {list(data)}.")
        return data[name]
    return data


class Pipeline(Preprocessor):
    """Steps applied in order to one raw input.

    Example:
        >>> pre = Pipeline([ToFloatCHW(), Scale(1 / 255), Resize((16, 16)), Normalize()],
        ...                input="image", output="pixels")
        >>> pre.fit(train_images)  # doctest: +SKIP
    """

    def __init__(self, steps: Sequence[Step], *, input: str = "input", output: str = "features") -> None:
        if not steps:
            raise SpecError("a preprocessing Pipeline needs at least one step.")
        if input == output:
            raise SpecError(f"the pipeline's input and output must have different names (both {input!r}).")
        self.chain = _Chain(input, steps)
        self.input, self._output = input, output

    @property
    def fitted(self) -> bool:
        return all(step.fitted for step in self.chain.steps)

    def fit(self, data: Any) -> Pipeline:
        """Fit every step on training data (an array, or a mapping with the one input)."""
        self.chain.fit(_single(data, self.input))
        return self

    def transform(self, data: Any) -> np.ndarray:
        """The research path on raw data: what the frozen graph must reproduce."""
        return self.chain.transform(_single(data, self.input))

    def research(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self._output: self.transform(raw)}

    def to_onnx(self, raw: Mapping[str, np.ndarray], opset: int) -> Any:
        graph = GraphBuilder()
        sample = np.asarray(_single(raw, self.input))
        result = graph.identity(self.chain.to_onnx(graph, sample), self._output)
        features = self.transform({self.input: sample[:1]})
        return make_model(
            graph,
            [value_info(self.input, sample.dtype, ["batch", *sample.shape[1:]])],
            [value_info(result, features.dtype, ["batch", *features.shape[1:]])],
            opset,
            "preprocess",
        )

    def columns(self) -> list[PreprocessColumn]:
        return [self.chain.describe(None)]

    def replaces_nan(self, input_name: str) -> bool:
        return input_name == self.input and self.chain.replaces_nan()

    def __repr__(self) -> str:
        return f"Pipeline({self.chain.steps!r}, input={self.input!r}, output={self._output!r})"


class Columns(Preprocessor):
    """Named raw inputs (tabular columns of mixed types), each with its own steps, concatenated
    along axis 1 into one float32 feature matrix ``[N, F]``, in the order given.

    A column with no steps (``[]``) passes through as float32. Category columns take
    strings; their one-hot block includes the OOV column.

    Example:
        >>> pre = Columns({"alcohol": [Impute("median"), Standardize()],
        ...                "region": [OneHot()]}, output="features")
        >>> pre.fit({"alcohol": a, "region": r})  # doctest: +SKIP
    """

    def __init__(self, columns: Mapping[str, Sequence[Step] | Step], *, output: str = "features") -> None:
        if not columns:
            raise SpecError("Columns needs at least one column.")
        if output in columns:
            raise SpecError(f"the output name {output!r} is also a column name; choose another.")
        self.chains = [_Chain(str(name), steps) for name, steps in columns.items()]
        self._output = output
        self._widths: list[int] | None = None

    @property
    def input_names(self) -> list[str]:
        return [chain.name for chain in self.chains]

    @property
    def fitted(self) -> bool:
        return self._widths is not None and all(s.fitted for chain in self.chains for s in chain.steps)

    def _column(self, data: Any, name: str) -> Any:
        try:
            return data[name]
        except (KeyError, IndexError, TypeError):
            available = list(data.keys()) if hasattr(data, "keys") else type(data).__name__
            raise SpecError(f"column {name!r} is missing from the data (it has {available}).") from None

    def fit(self, data: Any) -> Columns:
        """Fit each column's steps on training data: a mapping (or DataFrame) of column -> values."""
        widths = []
        for chain in self.chains:
            chain.fit(self._column(data, chain.name))
            widths.append(self._block(chain, chain.transform(self._column(data, chain.name))).shape[1])
        self._widths = widths
        return self

    @staticmethod
    def _block(chain: _Chain, values: np.ndarray) -> np.ndarray:
        if values.ndim != 2:
            raise SpecError(
                f"column {chain.name!r} gives shape {list(values.shape)} after its steps; "
                "Columns concatenates [N, k] blocks."
            )
        return values.astype(np.float32, copy=False)

    def transform(self, data: Any) -> np.ndarray:
        """The research path on raw columns: the ``[N, F]`` float32 feature matrix."""
        if self._widths is None:
            raise SpecError("Columns is not fitted; call fit(training_data) before exporting.")
        blocks = [self._block(chain, chain.transform(self._column(data, chain.name))) for chain in self.chains]
        lengths = {chain.name: len(block) for chain, block in zip(self.chains, blocks, strict=True)}
        if len(set(lengths.values())) != 1:
            raise SpecError(f"columns disagree on the number of rows: {lengths}.")
        return np.concatenate(blocks, axis=1)

    def research(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = set(raw) - set(self.input_names)
        if unknown:
            raise SpecError(
                f"reference input {sorted(unknown)[0]!r} is not a column of the preprocessing "
                f"({', '.join(self.input_names)})."
            )
        return {self._output: self.transform(raw)}

    def to_onnx(self, raw: Mapping[str, np.ndarray], opset: int) -> Any:
        self.transform({name: np.asarray(raw[name])[:1] for name in self.input_names})  # fitted, and the columns fit
        graph = GraphBuilder()
        blocks = []
        for chain in self.chains:
            block = chain.to_onnx(graph, np.asarray(raw[chain.name]))
            if chain.steps and chain.steps[-1].kind == "index":
                block = graph.node("Cast", [block], f"{chain.name}/as_float", to=1)
            blocks.append(block)
        joined = graph.node("Concat", blocks, "concat", axis=1) if len(blocks) > 1 else blocks[0]
        result = graph.identity(joined, self._output)
        inputs = [
            value_info(name, np.asarray(raw[name]).dtype, ["batch", *np.asarray(raw[name]).shape[1:]])
            for name in self.input_names
        ]
        return make_model(
            graph,
            inputs,
            [value_info(result, np.dtype(np.float32), ["batch", sum(self._widths or [])])],
            opset,
            "preprocess",
        )

    def columns(self) -> list[PreprocessColumn]:
        described, start = [], 0
        # Before fit() there are no widths, and so no columns to describe yet.
        for chain, width in zip(self.chains, self._widths or [], strict=False):
            described.append(chain.describe([start, start + width]))
            start += width
        return described

    def replaces_nan(self, input_name: str) -> bool:
        return any(chain.name == input_name and chain.replaces_nan() for chain in self.chains)

    def __repr__(self) -> str:
        inner = ", ".join(f"{c.name!r}: {c.steps!r}" for c in self.chains)
        return f"Columns({{{inner}}}, output={self._output!r})"
