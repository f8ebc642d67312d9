"""Running a session on validated inputs, in batches along the first axis."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bundle.manifest import TensorSpec
from ..errors import ModelRunError
from .validation import validate_inputs

DEFAULT_BATCH_SIZE = 1024


@dataclass
class Runner:
    """Runs a session on validated inputs, in batches along the first axis."""

    session: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # Inclusive value ranges of integer inputs that index a table (runtime/index_bounds.py).
    bounds: dict[str, tuple[int, int]] = field(default_factory=dict)
    _output_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self._output_names = [o.name for o in self.outputs]

    def validate(
        self, inputs: Mapping[str, Any] | np.ndarray, *, check_finite: bool = True, check_utf8: bool = True
    ) -> dict[str, np.ndarray]:
        """:func:`~paritybundle.runtime.validation.validate_inputs` against this runner's input specs.

        Raises:
            InputValidationError: naming the input and what is wrong.
        """
        return validate_inputs(
            self.inputs, inputs, check_finite=check_finite, bounds=self.bounds, check_utf8=check_utf8
        )

    def run(
        self, inputs: Mapping[str, np.ndarray], batch_size: int | None = DEFAULT_BATCH_SIZE
    ) -> dict[str, np.ndarray]:
        """Run validated inputs through the session, ``batch_size`` samples at a time.

        Raises:
            ModelRunError: ONNX Runtime refused these inputs at run time (its reason included).
        """
        total = _batch_length(inputs)
        if not batch_size or total <= batch_size:
            return dict(zip(self._output_names, self._run(dict(inputs)), strict=True))
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self._output_names}
        for batch in iter_batches(inputs, batch_size):
            for name, value in zip(self._output_names, self._run(batch), strict=True):
                parts[name].append(value)
        return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(self._output_names, feed)
        except Exception as exc:  # ORT's own pybind classes (Fail, InvalidArgument, RuntimeException, ...)
            reason = " ".join(str(exc).split())[:500]
            raise ModelRunError(f"ONNX Runtime could not run the model on these inputs: {reason}") from None


def _batch_length(inputs: Mapping[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def iter_batches(inputs: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Slices of every input along the first axis (views, no copies)."""
    total = _batch_length(inputs)
    for start in range(0, total, batch_size):
        yield {name: array[start : start + batch_size] for name, array in inputs.items()}
