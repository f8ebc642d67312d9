"""Fit-able preprocessing steps: the :class:`Step` base and its conventions (the steps themselves
are in :mod:`.tabular` (numbers, categories) and :mod:`.image`).

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

from typing import Any, ClassVar

import numpy as np

from ...bundle.manifest import NanBehaviour
from ...errors import SpecError
from .graph import GraphBuilder


class Step:
    """One fit-able transformation; see the module docstring for the conventions."""

    kind: ClassVar[str] = "step"
    takes: ClassVar[str] = "numbers"  # what it accepts: "numbers", "strings" or "images"
    nan: ClassVar[NanBehaviour] = "propagates"
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
            raise SpecError(
                f"preprocessing step {self!r} is not fitted; call fit(training_data) on the pipeline before exporting."
            )

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


def floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def statistic(x: np.ndarray, reduce: Any, what: str) -> np.ndarray:
    """A per-feature statistic over axis 0, ignoring NaN; a feature with no value is an error."""
    x = np.asarray(x, dtype=np.float64)
    observed = (~np.isnan(x)).sum(axis=0)
    if (observed == 0).any():
        raise SpecError(
            f"cannot fit {what}: feature {int(np.argmax(observed == 0))} has no observed "
            "(non-NaN) value in the training data."
        )
    return reduce(x, axis=0)
