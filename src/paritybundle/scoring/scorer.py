"""Scoring one batch of rows with a gated runtime: the step every engine runs (local loop, Ray actor,
Spark Python worker)."""

from __future__ import annotations

import numpy as np

from ..errors import InputValidationError
from .columns import ColumnPlan, inputs_of, scored_table
from .gate import Gate


class Scorer:
    """A worker's gate (passed) and the column plan: ``scorer(batch, first_row)`` -> the scored batch.

    ``batch_size`` bounds the rows per ONNX Runtime call (None: the whole batch, whose size the engine
    already bounds). A row the model cannot take (a missing value,
    NaN where the bundle refuses it, a string for a category the graph cannot encode) stops the job
    with a usage error naming the column and the rows; nothing is skipped silently.
    """

    def __init__(self, gate: Gate, plan: ColumnPlan, batch_size: int | None = None) -> None:
        self.gate, self.plan, self.batch_size = gate, plan, batch_size
        self.rows = 0

    def __call__(self, batch, first_row: int, row_ids: np.ndarray | None = None, where: str = ""):  # noqa: ANN001, ANN201
        runner = self.gate.runtime.runner
        try:
            # Strings come decoded from Arrow's UTF-8: the per-string encoding scan cannot fail here.
            inputs = runner.validate(inputs_of(self.plan, batch, first_row), check_utf8=False)
            outputs = runner.run(inputs, self.batch_size)
        except InputValidationError as exc:
            place = (
                f"{where}, rows {first_row}..{first_row + batch.num_rows - 1}"
                if where
                else f"rows {first_row}..{first_row + batch.num_rows - 1}"
            )
            raise type(exc)(f"{place}: {exc}") from None
        if row_ids is None and self.plan.id_column is None:
            row_ids = np.arange(first_row, first_row + batch.num_rows, dtype=np.int64)
        self.rows += batch.num_rows
        return scored_table(self.plan, batch, outputs, row_ids)
