"""Steps for tabular columns: numbers (scale, clip, impute, log) and categories (index, one-hot)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ...errors import SpecError
from .graph import GraphBuilder
from .steps import Step, floats, statistic

# --- numbers ---------------------------------------------------------------------------


class Standardize(Step):
    """``(x - mean) / std`` per feature; a constant feature (std 0) is divided by 1."""

    kind = "standardize"

    def _fit(self, x: np.ndarray) -> None:
        self.mean = statistic(x, np.nanmean, "standardize").astype(np.float32)
        std = statistic(x, np.nanstd, "standardize")
        self.std = np.where(std > 0, std, 1.0).astype(np.float32)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        centred = graph.node("Sub", [x, graph.constant(self.mean, f"{where}/mean")], f"{where}/centred")
        return graph.node("Div", [centred, graph.constant(self.std, f"{where}/std")], where)

    def _describe(self) -> dict[str, Any]:
        return {"mean": floats(self.mean), "std": floats(self.std)}


class MinMaxScale(Step):
    """Maps each feature's fitted ``[min, max]`` onto ``feature_range`` (a constant feature: scale 1)."""

    kind = "min_max_scale"

    def __init__(self, feature_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        low, high = feature_range
        if not high > low:
            raise SpecError(f"MinMaxScale feature_range {feature_range} must have low < high.")
        self.feature_range = (float(low), float(high))

    def _fit(self, x: np.ndarray) -> None:
        low, high = self.feature_range
        self.data_min = statistic(x, np.nanmin, "min_max_scale")
        self.data_max = statistic(x, np.nanmax, "min_max_scale")
        span = self.data_max - self.data_min
        scale = np.where(span > 0, (high - low) / np.where(span > 0, span, 1.0), 1.0)
        self.scale = scale.astype(np.float32)
        self.offset = (low - self.data_min * scale).astype(np.float32)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale + self.offset

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        scaled = graph.node("Mul", [x, graph.constant(self.scale, f"{where}/scale")], f"{where}/scaled")
        return graph.node("Add", [scaled, graph.constant(self.offset, f"{where}/offset")], where)

    def _describe(self) -> dict[str, Any]:
        return {"feature_range": list(self.feature_range), "min": floats(self.data_min), "max": floats(self.data_max)}

    def __repr__(self) -> str:
        return f"MinMaxScale(feature_range={self.feature_range})"


class Clip(Step):
    """Limits each feature to ``[lower, upper]``: fixed bounds, or fitted quantiles of the training data.

    Example: ``Clip(quantiles=(0.01, 0.99))`` fits the 1st and 99th percentile per feature.
    """

    kind = "clip"

    def __init__(
        self, lower: float | None = None, upper: float | None = None, quantiles: tuple[float, float] | None = None
    ) -> None:
        if quantiles is not None and (lower is not None or upper is not None):
            raise SpecError("Clip takes either fixed lower/upper bounds or quantiles, not both.")
        if quantiles is None and lower is None and upper is None:
            raise SpecError("Clip needs lower and/or upper bounds, or quantiles=(low, high).")
        if quantiles is not None and not 0 <= quantiles[0] < quantiles[1] <= 1:
            raise SpecError(f"Clip quantiles {quantiles} must satisfy 0 <= low < high <= 1.")
        self.quantiles = quantiles
        self.fixed = (lower, upper)
        self.fits = quantiles is not None  # fixed bounds have nothing to learn
        super().__init__()
        if quantiles is None:
            # 0-d arrays, as fitted quantiles are arrays: one type for both ways of setting the bounds.
            self.lower: np.ndarray = np.asarray(-np.inf if lower is None else lower, dtype=np.float32)
            self.upper: np.ndarray = np.asarray(np.inf if upper is None else upper, dtype=np.float32)

    def _fit(self, x: np.ndarray) -> None:
        if self.quantiles is None:
            return
        low, high = self.quantiles
        self.lower = statistic(x, lambda a, axis: np.nanquantile(a, low, axis=axis), "clip").astype(np.float32)
        self.upper = statistic(x, lambda a, axis: np.nanquantile(a, high, axis=axis), "clip").astype(np.float32)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        # np.minimum/np.maximum propagate NaN, as ONNX Min/Max do.
        return np.maximum(np.minimum(x, self.upper), self.lower)

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        capped = graph.node("Min", [x, graph.constant(self.upper, f"{where}/upper")], f"{where}/capped")
        return graph.node("Max", [capped, graph.constant(self.lower, f"{where}/lower")], where)

    def _describe(self) -> dict[str, Any]:
        # A side left open (Clip(lower=0)) is an infinite bound in the graph and None here: the manifest holds
        # finite numbers only, and coverage and drift read a range only where both sides are set.
        return {
            "quantiles": list(self.quantiles) if self.quantiles else None,
            "lower": floats(self.lower) if np.isfinite(self.lower).all() else None,
            "upper": floats(self.upper) if np.isfinite(self.upper).all() else None,
        }

    def __repr__(self) -> str:
        return (
            f"Clip(quantiles={self.quantiles})"
            if self.quantiles
            else f"Clip(lower={self.fixed[0]}, upper={self.fixed[1]})"
        )


class Impute(Step):
    """Replaces NaN by the feature's fitted ``mean`` or ``median``, or by a ``constant``.

    Only NaN counts as missing; infinities are values and pass through.
    """

    kind = "impute"
    nan = "replaced"
    STRATEGIES = ("mean", "median", "constant")

    def __init__(self, strategy: str = "mean", fill_value: float = 0.0) -> None:
        if strategy not in self.STRATEGIES:
            raise SpecError(f"Impute strategy {strategy!r} is not one of {', '.join(self.STRATEGIES)}.")
        self.strategy, self.fill_value = strategy, float(fill_value)
        super().__init__()

    def _fit(self, x: np.ndarray) -> None:
        if self.strategy == "constant":
            self.fill = np.full(x.shape[1:], self.fill_value, dtype=np.float32)
        else:
            reduce = np.nanmean if self.strategy == "mean" else np.nanmedian
            self.fill = statistic(x, reduce, f"impute ({self.strategy})").astype(np.float32)
        self.missing_share = floats(np.isnan(np.asarray(x, dtype=np.float64)).mean(axis=0))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(x), self.fill, x).astype(np.float32)

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        missing = graph.node("IsNaN", [x], f"{where}/missing")
        return graph.node("Where", [missing, graph.constant(self.fill, f"{where}/fill"), x], where)

    def _describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "fill": floats(self.fill), "missing_share_in_training": self.missing_share}

    def __repr__(self) -> str:
        return f"Impute({self.strategy!r})"


class Log1p(Step):
    """``log(1 + x)``; values below -1 give NaN, -1 gives -inf (as numpy and ONNX's Log do)."""

    kind = "log1p"
    fits = False

    def _transform(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log1p(x).astype(np.float32)

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        shifted = graph.node("Add", [x, graph.constant(1.0, f"{where}/one")], f"{where}/shifted")
        return graph.node("Log", [shifted], where)


# --- categories --------------------------------------------------------------------------


class Index(Step):
    """Category string -> int64 index in the fitted vocabulary; unseen -> the OOV bucket.

    The vocabulary is ordered by frequency in the training data (ties: alphabetical),
    so index 0 is the most common category. ``max_categories`` keeps the most
    frequent ones; ``min_frequency`` drops rarer ones (both then count as OOV).
    The OOV index is ``len(vocabulary)``.
    """

    kind = "index"
    takes = "strings"
    nan = "none"

    def __init__(self, max_categories: int | None = None, min_frequency: int = 1) -> None:
        if max_categories is not None and max_categories < 1:
            raise SpecError("max_categories must be at least 1.")
        if min_frequency < 1:
            raise SpecError("min_frequency must be at least 1.")
        self.max_categories, self.min_frequency = max_categories, min_frequency
        super().__init__()

    def _fit(self, x: np.ndarray) -> None:
        counts = Counter(str(v) for v in np.asarray(x).ravel())
        ranked = sorted((c for c in counts.items() if c[1] >= self.min_frequency), key=lambda item: (-item[1], item[0]))
        if self.max_categories is not None:
            ranked = ranked[: self.max_categories]
        if not ranked:
            raise SpecError("cannot fit a category vocabulary: no category is frequent enough in the training data.")
        self.vocabulary = [value for value, _ in ranked]
        self.counts = [count for _, count in ranked]
        self._lookup = {value: k for k, value in enumerate(self.vocabulary)}

    @property
    def oov_index(self) -> int:
        return len(self.vocabulary)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        flat = [self._lookup.get(str(v), self.oov_index) for v in np.asarray(x).ravel()]
        return np.asarray(flat, dtype=np.int64).reshape(np.shape(x))

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        return graph.node(
            "LabelEncoder",
            [x],
            where,
            domain="ai.onnx.ml",
            keys_strings=self.vocabulary,
            values_int64s=list(range(len(self.vocabulary))),
            default_int64=self.oov_index,
        )

    def _describe(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary, "counts": self.counts, "oov_index": self.oov_index}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_categories={self.max_categories}, min_frequency={self.min_frequency})"


class OneHot(Index):
    """Category string -> one-hot float32 row of ``len(vocabulary) + 1`` (the last column is OOV).

    Takes ``[N, 1]`` strings and gives ``[N, len(vocabulary) + 1]``.
    """

    kind = "one_hot"

    def _transform(self, x: np.ndarray) -> np.ndarray:
        indices = super()._transform(np.asarray(x).reshape(-1))
        return np.eye(self.oov_index + 1, dtype=np.float32)[indices]

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        flat = graph.node("Reshape", [x, graph.constant([-1], f"{where}/flat_shape", np.int64)], f"{where}/flat")
        indices = super()._to_onnx(graph, flat, f"{where}/index")
        return graph.node(
            "OneHot",
            [
                indices,
                graph.constant(self.oov_index + 1, f"{where}/depth", np.int64),
                graph.constant([0.0, 1.0], f"{where}/values"),
            ],
            where,
            axis=-1,
        )
