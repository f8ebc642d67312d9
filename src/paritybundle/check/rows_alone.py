"""Single-row passes: a sample of the reference rows, each run alone, judged against research.

A check runs the reference set in batches; a server answers one request at a time. A model whose
row outputs depend on the rest of the batch (statistics over the batch) passes the batched check and
fails its users, so every check also runs :data:`SAMPLED_ROWS` rows spread over the reference set one
at a time, through the same target, judged by the same policy: a stage of its own in the report
(``"rows alone"``), and a diagnosis naming batch composition when only it fails. Export refuses such
models outright (:mod:`paritybundle.training.batch_independence`); this catches bundles made before
that, and a serving stack that batches differently.

The rows are collected while the reference set streams (the loop's judges see every batch), so the
reference arrays are read once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np

from ..parity.localise import StageResult
from . import engine
from .engine import Comparison, Part, Run, Target
from .sources import InMemoryReferences

SAMPLED_ROWS = 16
STAGE: Final = "rows alone"


def sampled_rows(rows: int, count: int = SAMPLED_ROWS) -> np.ndarray:
    """Up to ``count`` row indices spread evenly over ``rows`` (the first and the last included)."""
    if rows <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, rows - 1, min(count, rows)).round().astype(np.int64))


class _Collector:
    """A judge that keeps, of one array, the rows whose sample number is picked."""

    def __init__(self, picks: np.ndarray) -> None:
        self.picks = picks
        self.rows: dict[int, np.ndarray] = {}

    def add(self, actual: np.ndarray, expected: np.ndarray, first_sample: int = 0) -> None:
        lo, hi = np.searchsorted(self.picks, [first_sample, first_sample + len(actual)])
        for k in self.picks[lo:hi]:
            self.rows[int(k)] = np.array(actual[k - first_sample : k - first_sample + 1])


def _stack(collectors: Mapping[str, _Collector], rows: list[int]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([c.rows[k] for k in rows]) for name, c in collectors.items()}


class _Answers:
    """A judge that only keeps what a one-row pass answered, by sample number."""

    def __init__(self) -> None:
        self.answered: dict[int, np.ndarray] = {}

    def add(self, actual: np.ndarray, expected: np.ndarray, first_sample: int = 0) -> None:
        self.answered[first_sample] = np.array(actual)

    def rows(self, picked: list[int], order: list[int]) -> np.ndarray:
        """The answers of ``picked`` (reference rows), stacked; samples are numbered in ``order``."""
        return np.concatenate([self.answered[order.index(k)] for k in picked])


class RowsAlone:
    """Collects the sampled rows' inputs and research outputs during a check's pass; then runs them alone."""

    def __init__(self, rows: int, inputs: list[str], outputs: list[str]) -> None:
        self.picks = sampled_rows(rows)
        self._inputs = {name: _Collector(self.picks) for name in inputs}
        self._outputs = {name: _Collector(self.picks) for name in outputs}

    @property
    def comparisons(self) -> list[Comparison]:
        """Add these to the check's pass (they compare a part with itself, only to see its rows)."""
        return [
            Comparison(Part("inputs"), Part("inputs"), list(self._inputs.items())),
            Comparison(Part("outputs"), Part("outputs"), list(self._outputs.items())),
        ]

    def finish(self, target: Target, judges_for: Callable[[Any], Mapping[str, Any]], file: str) -> StageResult | None:
        """Each collected row through ``target`` on its own, judged by ``judges_for(source)``; None when
        fewer than two rows were checked (one row is always alone)."""
        picked = [int(k) for k in self.picks if all(int(k) in c.rows for c in self._inputs.values())]
        if len(picked) < 2 or len(self.picks) < 2:
            return None
        # Each row is its own request (a pass of one row at a time through the loop, its answers only
        # collected), then their answers are judged together, one pass per shape: a judge's pass costs more
        # than a one-row inference (16 judged passes were 7 ms of a 65 ms check).
        by_shape: dict[tuple, list[int]] = {}
        for k in picked:
            by_shape.setdefault(tuple(c.rows[k].shape for c in self._inputs.values()), []).append(k)
        order = [k for rows in by_shape.values() for k in rows]
        requests = InMemoryReferences(
            [
                {"inputs": _stack(self._inputs, rows), "outputs": _stack(self._outputs, rows)}
                for rows in by_shape.values()
            ]
        )
        answers = {name: _Answers() for name in self._outputs}
        engine.run(
            requests, [Comparison(Run(target, Part("inputs")), Part("outputs"), list(answers.items()))], rows_per_pass=1
        )
        source = InMemoryReferences(
            [
                {
                    "served": {n: answers[n].rows(rows, order) for n in self._outputs},
                    "outputs": _stack(self._outputs, rows),
                }
                for rows in by_shape.values()
            ]
        )
        judges = judges_for(source)
        engine.run(
            source, [Comparison(Part("served"), Part("outputs"), list(judges.items()))], rows_per_pass=len(picked)
        )
        outputs = [judge.finish() for judge in judges.values()]
        where = ", ".join(str(k) for k in order)  # in the order judged
        return StageResult(
            stage=STAGE, file=f"{file}, reference rows {where} one request each", passed=all(outputs), outputs=outputs
        )
