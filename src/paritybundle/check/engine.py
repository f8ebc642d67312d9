"""The one comparison loop: a source of reference rows, targets that produce outputs, judges.

A *source* (:mod:`.sources`) yields batches of rows in named *parts*: ``inputs`` (what
a caller sends), ``outputs`` (what research computed), ``features`` (the research
preprocessing's outputs), each a dict of arrays with the same rows. A *target*
(:mod:`.targets`) turns arrays into arrays: an ONNX Runtime session, a live V2
endpoint, a worker. A :class:`Comparison` says what is compared with what: each side
is an *operand*, a part of the batch (:class:`Part`) or a target run on another operand
(:class:`Run`), and one judge per array accumulates its verdict (see
:mod:`paritybundle.parity.judge`).

Every check runs through :func:`run`: ``bundle check`` (one comparison, or four for a
bundle with preprocessing), ``check --url``, ``check --references``, ``bundle diff``'s
cross-runs, the server's start-up check and export's fail-closed validation. A new
source or target is a small class; it never writes a loop of its own.

::

    source.batches(n) --> Batch{inputs, outputs, ...} --+--> Run(target, Part("inputs")) --> actual --+
                                                        +--> Part("outputs") -----------> expected --+--> judges
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Batch:
    """Consecutive rows of a source: ``parts[part][array]`` all hold ``rows`` rows starting at ``first``.

    ``label`` names where the rows came from when a source has several origins (an ONNX
    test data set, say), for messages.
    """

    first: int
    rows: int
    parts: Mapping[str, Arrays]
    label: str | None = None


class Source(Protocol):
    """Rows to compare, in batches. ``rows`` is known up front (judges size their buffers by it)."""

    rows: int

    def total_elements(self, part: str, name: str) -> int:
        """How many elements array ``name`` of ``part`` holds over all rows."""

    def batches(self, rows_per_pass: int) -> Iterator[Batch]:
        """Consecutive batches of at most ``rows_per_pass`` rows (a source may use its own grouping)."""


class Target(Protocol):
    """Something that computes outputs from inputs: ``target(inputs) -> outputs``."""

    def __call__(self, inputs: Arrays) -> Arrays: ...


class Judge(Protocol):
    """Accumulates one array's verdict (an :class:`~paritybundle.parity.accumulator.OutputAccumulator`)."""

    def add(self, actual: np.ndarray, expected: np.ndarray, first_sample: int, /) -> None: ...


@dataclass(frozen=True)
class Part:
    """Operand: one part of the source's batch, as it is."""

    name: str


@dataclass(frozen=True, eq=False)
class Run:
    """Operand: ``target`` run on another operand. Each run is computed once per batch, however
    many comparisons use it (identity, not equality, tells runs apart)."""

    target: Target
    on: Operand


Operand = Part | Run


@dataclass
class Comparison:
    """``actual`` against ``expected``, judged array by array.

    Args:
        actual / expected: the two operands.
        judges: ``(array name, judge)`` pairs; several judges may watch one array (a column's
            slice and the whole feature array, say).
        on_shape_mismatch: called with ``(name, actual, expected, batch)`` when the shapes of an
            array differ; it may raise. Without it the judge records the difference as a failure.
    """

    actual: Operand
    expected: Operand
    judges: Sequence[tuple[str, Judge]]
    on_shape_mismatch: Callable[[str, np.ndarray, np.ndarray, Batch], None] | None = None


@dataclass
class _Evaluation:
    """One batch's operands, each computed once."""

    batch: Batch
    runs: dict[int, Arrays] = field(default_factory=dict)

    def __call__(self, operand: Operand) -> Arrays:
        if isinstance(operand, Part):
            return self.batch.parts[operand.name]
        key = id(operand)
        if key not in self.runs:
            self.runs[key] = operand.target(self(operand.on))
        return self.runs[key]


def run(
    source: Source,
    comparisons: Sequence[Comparison],
    *,
    rows_per_pass: int,
    advance: Callable[[int], None] | None = None,
) -> int:
    """Feed every batch of ``source`` through ``comparisons``; returns the number of rows compared.

    ``advance(rows)`` is called after each batch (a progress bar). Targets and judges raise
    what they raise; the loop itself adds no policy.
    """
    rows = 0
    for batch in source.batches(rows_per_pass):
        evaluate = _Evaluation(batch)
        for comparison in comparisons:
            actual, expected = evaluate(comparison.actual), evaluate(comparison.expected)
            for name, judge in comparison.judges:
                got, wanted = actual[name], expected[name]
                if comparison.on_shape_mismatch is not None and np.shape(got) != np.shape(wanted):
                    comparison.on_shape_mismatch(name, got, wanted, batch)
                judge.add(got, wanted, batch.first)
        rows += batch.rows
        if advance is not None:
            advance(batch.rows)
    return rows
