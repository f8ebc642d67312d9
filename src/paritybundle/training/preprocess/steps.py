"""Fit-able preprocessing steps: numbers, categories and images.

Each step has two implementations of one meaning, kept side by side so they can
be read against each other: ``transform`` (the research path, numpy) and
``to_onnx`` (the frozen graph). ``fit`` computes the statistics once, from
training data; afterwards they are constants in both paths. Export runs both on
the reference inputs and refuses to write a bundle if they disagree.

Conventions, shared by every step:

* numeric steps work in float32 on ``[N, F]`` arrays (a 1-D column is ``[N, 1]``)
  and fit one statistic per feature (axis 0); statistics are computed in float64,
  ignoring NaN, and stored as float32;
* ``nan`` says what a step does with a missing value (NaN): ``"propagates"`` (NaN in,
  NaN out) or ``"replaced"``; a serving input refuses NaN unless a step of its
  column replaces it (or the reference inputs hold NaN);
* string steps work on ``[N, 1]`` string arrays; matching is exact (case and
  whitespace count), and a category not seen in fitting goes to the
  out-of-vocabulary (OOV) bucket, the last index;
* image steps: :class:`ToFloatCHW` takes uint8 ``[N, H, W, C]`` and gives float32
  ``[N, C, H, W]``; the steps after it work on that layout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ...errors import SpecError
from .graph import GraphBuilder


class Step:
    """One fit-able transformation; see the module docstring for the conventions."""

    kind: ClassVar[str] = "step"
    takes: ClassVar[str] = "numbers"  # what it accepts: "numbers", "strings" or "images"
    nan: ClassVar[str] = "propagates"
    #: whether ``fit`` learns anything (steps without state are fitted from the start)
    fits: bool = True

    def __init__(self) -> None:
        self._fitted = not self.fits

    @property
    def fitted(self) -> bool:
        return self._fitted

    def fit(self, x: np.ndarray) -> Step:
        """Learn this step's statistics from training data ``x`` (the previous step's output)."""
        self._fit(x)
        self._fitted = True
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """The research path: this step applied in numpy."""
        self._require_fitted()
        return self._transform(x)

    def to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        """Append this step's nodes to ``graph`` reading ``x``; returns the output's name.

        ``where`` (e.g. ``"alcohol/standardize"``) prefixes every constant's name.
        """
        self._require_fitted()
        return self._to_onnx(graph, x, where)

    def describe(self) -> dict[str, Any]:
        """The fitted state and settings, JSON-ready: shown by ``bundle inspect``."""
        self._require_fitted()
        return self._describe()

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise SpecError(f"preprocessing step {self!r} is not fitted; call fit(training_data) on the "
                            "pipeline before exporting.")

    def _fit(self, x: np.ndarray) -> None:
        pass

    def _transform(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        raise NotImplementedError

    def _describe(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _statistic(x: np.ndarray, reduce: Any, what: str) -> np.ndarray:
    """A per-feature statistic over axis 0, ignoring NaN; a feature with no value is an error."""
    x = np.asarray(x, dtype=np.float64)
    observed = (~np.isnan(x)).sum(axis=0)
    if (observed == 0).any():
        raise SpecError(f"cannot fit {what}: feature {int(np.argmax(observed == 0))} has no observed "
                        "(non-NaN) value in the training data.")
    return reduce(x, axis=0)


# --- numbers ---------------------------------------------------------------------------


class Standardize(Step):
    """``(x - mean) / std`` per feature; a constant feature (std 0) is divided by 1."""

    kind = "standardize"

    def _fit(self, x: np.ndarray) -> None:
        self.mean = _statistic(x, np.nanmean, "standardize").astype(np.float32)
        std = _statistic(x, np.nanstd, "standardize")
        self.std = np.where(std > 0, std, 1.0).astype(np.float32)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        centred = graph.node("Sub", [x, graph.constant(self.mean, f"{where}/mean")], f"{where}/centred")
        return graph.node("Div", [centred, graph.constant(self.std, f"{where}/std")], where)

    def _describe(self) -> dict[str, Any]:
        return {"mean": _floats(self.mean), "std": _floats(self.std)}


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
        self.data_min = _statistic(x, np.nanmin, "min_max_scale")
        self.data_max = _statistic(x, np.nanmax, "min_max_scale")
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
        return {"feature_range": list(self.feature_range), "min": _floats(self.data_min),
                "max": _floats(self.data_max)}

    def __repr__(self) -> str:
        return f"MinMaxScale(feature_range={self.feature_range})"


class Clip(Step):
    """Limits each feature to ``[lower, upper]``: fixed bounds, or fitted quantiles of the training data.

    Example: ``Clip(quantiles=(0.01, 0.99))`` fits the 1st and 99th percentile per feature.
    """

    kind = "clip"

    def __init__(self, lower: float | None = None, upper: float | None = None,
                 quantiles: tuple[float, float] | None = None) -> None:
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
            self.lower = np.float32(-np.inf if lower is None else lower)
            self.upper = np.float32(np.inf if upper is None else upper)

    def _fit(self, x: np.ndarray) -> None:
        if self.quantiles is None:
            return
        self.lower = _statistic(x, lambda a, axis: np.nanquantile(a, self.quantiles[0], axis=axis), "clip").astype(np.float32)
        self.upper = _statistic(x, lambda a, axis: np.nanquantile(a, self.quantiles[1], axis=axis), "clip").astype(np.float32)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        # np.minimum/np.maximum propagate NaN, as ONNX Min/Max do.
        return np.maximum(np.minimum(x, self.upper), self.lower)

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        capped = graph.node("Min", [x, graph.constant(self.upper, f"{where}/upper")], f"{where}/capped")
        return graph.node("Max", [capped, graph.constant(self.lower, f"{where}/lower")], where)

    def _describe(self) -> dict[str, Any]:
        return {"quantiles": list(self.quantiles) if self.quantiles else None,
                "lower": _floats(self.lower), "upper": _floats(self.upper)}

    def __repr__(self) -> str:
        return f"Clip(quantiles={self.quantiles})" if self.quantiles else f"Clip(lower={self.fixed[0]}, upper={self.fixed[1]})"


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
            self.fill = _statistic(x, reduce, f"impute ({self.strategy})").astype(np.float32)
        self.missing_share = _floats(np.isnan(np.asarray(x, dtype=np.float64)).mean(axis=0))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(x), self.fill, x).astype(np.float32)

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        missing = graph.node("IsNaN", [x], f"{where}/missing")
        return graph.node("Where", [missing, graph.constant(self.fill, f"{where}/fill"), x], where)

    def _describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "fill": _floats(self.fill),
                "missing_share_in_training": self.missing_share}

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
            ranked = ranked[:self.max_categories]
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
        return graph.node("LabelEncoder", [x], where, domain="ai.onnx.ml", keys_strings=self.vocabulary,
                          values_int64s=list(range(len(self.vocabulary))), default_int64=self.oov_index)

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
        return graph.node("OneHot", [indices, graph.constant(self.oov_index + 1, f"{where}/depth", np.int64),
                                     graph.constant([0.0, 1.0], f"{where}/values")], where, axis=-1)


# --- images ------------------------------------------------------------------------------


class ToFloatCHW(Step):
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` (values unchanged: 0..255)."""

    kind = "to_float_chw"
    takes = "images"
    fits = False

    def _transform(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4:
            raise SpecError(f"ToFloatCHW takes images [N, H, W, C]; got shape {list(x.shape)}.")
        return np.ascontiguousarray(x.astype(np.float32).transpose(0, 3, 1, 2))

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        floats = graph.node("Cast", [x], f"{where}/float", to=1)  # TensorProto.FLOAT
        return graph.node("Transpose", [floats], where, perm=[0, 3, 1, 2])


class Scale(Step):
    """``x * factor``, e.g. ``Scale(1 / 255)`` for pixel values in [0, 1]."""

    kind = "scale"
    fits = False

    def __init__(self, factor: float) -> None:
        self.factor = float(factor)
        super().__init__()

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return (x * np.float32(self.factor)).astype(np.float32)

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        return graph.node("Mul", [x, graph.constant(self.factor, f"{where}/factor")], where)

    def _describe(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def __repr__(self) -> str:
        return f"Scale({self.factor})"


class ChannelOrder(Step):
    """Reorders channels of ``[N, C, H, W]``: ``ChannelOrder("RGB", "BGR")`` swaps red and blue."""

    kind = "channel_order"
    fits = False

    def __init__(self, source: str, target: str) -> None:
        if sorted(source) != sorted(target) or len(set(source)) != len(source):
            raise SpecError(f"ChannelOrder({source!r}, {target!r}) must name the same distinct channels in a new order.")
        self.source, self.target = source, target
        self.order = [source.index(c) for c in target]
        super().__init__()

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:, self.order])

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        return graph.node("Gather", [x, graph.constant(self.order, f"{where}/order", np.int64)], where, axis=1)

    def _describe(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "order": self.order}

    def __repr__(self) -> str:
        return f"ChannelOrder({self.source!r}, {self.target!r})"


class Normalize(Step):
    """Per-channel ``(x - mean) / std`` on ``[N, C, H, W]``; fitted from training images when not given."""

    kind = "normalize"

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if (mean is None) != (std is None):
            raise SpecError("Normalize takes both mean and std, or neither (then both are fitted).")
        super().__init__()
        if mean is not None and std is not None:
            if any(s <= 0 for s in std):
                raise SpecError("Normalize std values must be positive.")
            self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
            self._fitted, self.given = True, True
        else:
            self.given = False

    def _fit(self, x: np.ndarray) -> None:
        if self.given:
            return
        values = np.asarray(x, dtype=np.float64)
        self.mean = values.mean(axis=(0, 2, 3)).astype(np.float32)
        std = values.std(axis=(0, 2, 3))
        self.std = np.where(std > 0, std, 1.0).astype(np.float32)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        centred = graph.node("Sub", [x, graph.constant(self.mean.reshape(1, -1, 1, 1), f"{where}/mean")], f"{where}/centred")
        return graph.node("Div", [centred, graph.constant(self.std.reshape(1, -1, 1, 1), f"{where}/std")], where)

    def _describe(self) -> dict[str, Any]:
        return {"mean": _floats(self.mean), "std": _floats(self.std), "fitted": not self.given}


class Resize(Step):
    """Resizes ``[N, C, H, W]`` to ``size=(height, width)``.

    Semantics (the research path implements them in numpy; the graph is ONNX Resize, opset 18):

    * ``"nearest"``: source pixel ``floor(i * in / out)`` (ONNX ``asymmetric`` + ``floor``),
      the same as ``torch.nn.functional.interpolate(mode="nearest")``;
    * ``"linear"`` / ``"cubic"`` (a = -0.75): pixel centres aligned (ONNX ``half_pixel``),
      borders replicate the edge pixel, the same as torch's ``bilinear``/``bicubic`` with
      ``align_corners=False, antialias=False``;
    * ``antialias=True`` (linear/cubic, when shrinking): the filter is widened by the
      shrink factor, as in ONNX Resize. Unlike torch's/PIL's antialias, ONNX keeps
      replicating edge pixels at the borders instead of renormalising a clipped window,
      so a research pipeline resized with ``interpolate(..., antialias=True)`` differs
      from this graph at the image borders (measured: up to 0.047 on values in [0, 1]).
    """

    kind = "resize"
    fits = False
    INTERPOLATIONS = ("nearest", "linear", "cubic")

    def __init__(self, size: tuple[int, int], interpolation: str = "linear", antialias: bool = False) -> None:
        if interpolation not in self.INTERPOLATIONS:
            raise SpecError(f"Resize interpolation {interpolation!r} is not one of {', '.join(self.INTERPOLATIONS)}.")
        if len(size) != 2 or min(size) < 1:
            raise SpecError(f"Resize size {size} must be (height, width), both at least 1.")
        if antialias and interpolation == "nearest":
            raise SpecError("Resize antialias applies to linear and cubic interpolation, not nearest.")
        self.size = (int(size[0]), int(size[1]))
        self.interpolation, self.antialias = interpolation, bool(antialias)
        super().__init__()

    def _transform(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4:
            raise SpecError(f"Resize takes images [N, C, H, W]; got shape {list(x.shape)}.")
        rows = resize_weights(x.shape[2], self.size[0], self.interpolation, self.antialias)
        cols = resize_weights(x.shape[3], self.size[1], self.interpolation, self.antialias)
        return np.einsum("ih,nchw,jw->ncij", rows, x.astype(np.float64), cols, optimize=True).astype(np.float32)

    def _to_onnx(self, graph: GraphBuilder, x: str, where: str) -> str:
        nearest = self.interpolation == "nearest"
        return graph.node(
            "Resize", [x, "", "", graph.constant(list(self.size), f"{where}/size", np.int64)], where,
            mode=self.interpolation, axes=[2, 3], antialias=int(self.antialias), cubic_coeff_a=-0.75,
            coordinate_transformation_mode="asymmetric" if nearest else "half_pixel",
            nearest_mode="floor" if nearest else "round_prefer_floor",
        )

    def _describe(self) -> dict[str, Any]:
        return {"size": list(self.size), "interpolation": self.interpolation, "antialias": self.antialias}

    def __repr__(self) -> str:
        return f"Resize({self.size}, {self.interpolation!r}, antialias={self.antialias})"


def _triangle(t: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(t))


def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def resize_weights(size_in: int, size_out: int, interpolation: str, antialias: bool) -> np.ndarray:
    """The ``[size_out, size_in]`` matrix one axis of :class:`Resize` applies (float64).

    Separable resizing is two such matrix products, which makes the semantics
    explicit: each output pixel is a weighted sum of input pixels.
    """
    weights = np.zeros((size_out, size_in))
    ratio = size_out / size_in
    if interpolation == "nearest":
        source = np.minimum(np.floor(np.arange(size_out) / ratio).astype(int), size_in - 1)
        weights[np.arange(size_out), source] = 1.0
        return weights
    kernel, support = (_triangle, 1.0) if interpolation == "linear" else (_cubic, 2.0)
    widen = ratio if (antialias and ratio < 1) else 1.0
    for out in range(size_out):
        centre = (out + 0.5) / ratio - 0.5
        taps = np.arange(int(np.floor(centre - support / widen)), int(np.ceil(centre + support / widen)) + 1)
        w = kernel((taps - centre) * widen)
        w = w / w.sum()
        # Borders replicate the edge pixel (ONNX Resize), so taps outside clamp to it.
        np.add.at(weights[out], np.clip(taps, 0, size_in - 1), w)
    return weights
