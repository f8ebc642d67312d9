"""Stage localization: when parity fails, say where.

A bundle with preprocessing has three graphs that can diverge: the preprocessing
(``preprocess.onnx`` on the raw reference inputs vs ``reference/features.npz``),
the model (``model.onnx`` on the reference features vs the research outputs), and
the merged ``pipeline.onnx`` that serving runs. Checking the first two on their
own, and the first per raw input (column), turns "the outputs differ" into
"column 'alcohol' of the preprocessing differs" or "the model differs on correct
features" or "only the merged graph differs". A fourth comparison, ``merge``, runs the
two stages in sequence on the raw inputs and holds the merged graph to that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..bundle.manifest import Preprocessing, TensorSpec, Tolerance
from ..bundle.strict import StrictModel
from .accumulator import OutputAccumulator
from .explain import explain_failure
from .results import OutputComparison

# "rows alone": a sample of the reference rows run one request each (check/rows_alone.py).
StageName = Literal["preprocess", "model", "pipeline", "merge", "rows alone"]


class ColumnResult(StrictModel):
    """One raw input's share of the features, compared on its own."""

    input: str
    feature: str
    # [start, stop) along the features' last axis; None: the whole feature array.
    features: list[int] | None
    comparison: OutputComparison


class StageResult(StrictModel):
    stage: StageName
    file: str
    passed: bool
    outputs: list[OutputComparison]
    columns: list[ColumnResult] = []


class ColumnAccumulator:
    """Accumulates one column's slice of a feature array while the reference set streams."""

    def __init__(
        self, input_name: str, feature: str, features: list[int] | None, tolerance: Tolerance, total_elements: int
    ) -> None:
        self.input, self.feature, self.features = input_name, feature, features
        self.accumulator = OutputAccumulator(input_name, tolerance, total_elements)

    def add(self, served: np.ndarray, expected: np.ndarray, first_sample: int) -> None:
        if self.features is not None:
            start, stop = self.features
            served, expected = served[..., start:stop], expected[..., start:stop]
        self.accumulator.add(served, expected, first_sample)

    def finish(self) -> ColumnResult:
        return ColumnResult(
            input=self.input, feature=self.feature, features=self.features, comparison=self.accumulator.finish()
        )


def column_accumulators(preprocessing: Preprocessing, tolerance: Tolerance, rows: int) -> list[ColumnAccumulator]:
    """One accumulator per raw input, over its slice of the features (a feature array
    fed by several inputs without known slices is attributed to all of them)."""
    specs = {spec.name: spec for spec in preprocessing.features}
    # Feature arrays a column names as its own (an input passed through) are not the others' to feed.
    claimed = {name for column in preprocessing.columns for name in column.outputs or ()}
    unclaimed = [spec for name, spec in specs.items() if name not in claimed]
    accumulators = []
    for column in preprocessing.columns:
        targets = [specs[name] for name in column.outputs if name in specs] if column.outputs else unclaimed
        for feature in targets:
            if column.features is not None and len(targets) > 1:
                continue  # slices are defined on a single feature array
            per_row = _elements_per_row(feature, column.features)
            accumulators.append(
                ColumnAccumulator(column.input, feature.name, column.features, tolerance, rows * per_row)
            )
    return accumulators


def spanning_columns(columns: Sequence[ColumnAccumulator]) -> dict[str, ColumnAccumulator]:
    """Feature name -> the one column that alone makes the whole feature array (a Pipeline's input):
    its comparison is that feature's, so the feature need not be compared again."""
    feeding = Counter(c.feature for c in columns)
    return {c.feature: c for c in columns if c.features is None and feeding[c.feature] == 1}


def _elements_per_row(spec: TensorSpec, features: list[int] | None) -> int:
    dims = [d for d in spec.shape[1:]]
    if features is not None:
        dims = dims[:-1] + [features[1] - features[0]]
    count = 1
    for dim in dims:
        count *= dim if isinstance(dim, int) else 1
    return count


def failing_columns(columns: Sequence[ColumnResult]) -> list[ColumnResult]:
    return [c for c in columns if not c.comparison.passed]


def describe_columns(columns: Sequence[ColumnResult]) -> str:
    """``column 'a' (features 0-1): <what failed>; column 'b' ...``"""
    parts = []
    for column in columns:
        where = f" (features {column.features[0]}-{column.features[1] - 1})" if column.features else ""
        detail = explain_failure(column.comparison).split(" failed: ", 1)[-1].rstrip(".")
        parts.append(f"column {column.input!r}{where}: {detail}")
    return "; ".join(parts)


def diagnose(stages: Sequence[StageResult], outputs_passed: bool = True, approximated: str | None = None) -> str | None:
    """One sentence on where a failing check diverged (None when every stage passed). ``outputs_passed``:
    the batched comparison of the outputs held (batch composition is blamed only then); ``approximated``: the
    serving graph's precision, when it approximates research by design."""
    by_name = {s.stage: s for s in stages}
    if all(s.passed for s in stages):
        return None
    alone = by_name.get("rows alone")
    if alone is not None and not alone.passed and outputs_passed and all(s.passed for s in stages if s is not alone):
        if approximated is not None:
            return (
                f"batch composition: the {approximated} serving graph meets its approximation budget on the "
                f"reference rows run together, but not run one request each ({alone.file}); quantized activations "
                "are scaled over the batch, so a lone row errs differently. Export measured the budget both ways "
                "on its machine: on this one the error is larger (CPU kernels differ); re-export here, or declare "
                "a budget with room for it."
            )
        return (
            f"batch composition: the reference rows reproduce research when run together, but not run one "
            f"request each ({alone.file}): a row's outputs depend on the rows batched with it (statistics over "
            "the batch, e.g. BatchNorm with track_running_stats=False), and a server answers requests one by "
            "one. Re-export it: export now refuses such a model."
        )
    pre, model, pipeline, merge = (by_name.get(n) for n in ("preprocess", "model", "pipeline", "merge"))
    if pre is None or model is None:
        return None
    if not pre.passed:
        columns = failing_columns(pre.columns)
        what = (
            describe_columns(columns) if columns else "; ".join(explain_failure(o) for o in pre.outputs if not o.passed)
        )
        model_part = (
            "the model reproduces research on the reference features, so the preprocessing is at fault"
            if model.passed
            else "the model also diverges on the reference features"
        )
        return f"preprocessing diverged in {pre.file}: {what}; {model_part}."
    if not model.passed:
        return (
            f"the model diverged on correct features: {pre.file} reproduces the reference features, but "
            f"{model.file} on those features does not reproduce the research outputs."
        )
    if (pipeline is not None and not pipeline.passed) or (merge is not None and not merge.passed):
        file = pipeline.file if pipeline is not None else "the merged pipeline"
        return (
            f"only the merged pipeline diverges: {pre.file} and {model.file} each reproduce research on their "
            f"own, but {file} does not compute what they compute in sequence; the merge (or an optimisation "
            "across the seam) is at fault."
        )
    return None
