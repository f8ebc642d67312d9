"""Steps for images: layout (uint8 HWC -> float CHW), scale, channel order, normalise, resize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import SpecError
from .graph import GraphBuilder
from .steps import Step, floats

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
            raise SpecError(
                f"ChannelOrder({source!r}, {target!r}) must name the same distinct channels in a new order."
            )
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
        centred = graph.node(
            "Sub", [x, graph.constant(self.mean.reshape(1, -1, 1, 1), f"{where}/mean")], f"{where}/centred"
        )
        return graph.node("Div", [centred, graph.constant(self.std.reshape(1, -1, 1, 1), f"{where}/std")], where)

    def _describe(self) -> dict[str, Any]:
        return {"mean": floats(self.mean), "std": floats(self.std), "fitted": not self.given}


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
            "Resize",
            [x, "", "", graph.constant(list(self.size), f"{where}/size", np.int64)],
            where,
            mode=self.interpolation,
            axes=[2, 3],
            antialias=int(self.antialias),
            cubic_coeff_a=-0.75,
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
