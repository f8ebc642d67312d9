"""The local engine: one process streams the input through its gated runtime into Parquet, in bounded memory.

Memory holds one batch of rows (``batch_rows``) and its scores at a time, whatever the input's size;
row ids are the rows' places in the input (file order, then row order).
"""

from __future__ import annotations

import socket
from pathlib import Path

from ..check.progress import progress_bar
from ..runtime.capture import pyarrow_modules
from .columns import ColumnPlan
from .gate import Gate
from .inputs import InputData
from .scorer import Scorer

ROWS_PER_FILE = 1_000_000


def local_where() -> tuple[str, str]:
    """(worker, node) names of this process."""
    return "local", socket.gethostname()


def score_local(
    gate: Gate,
    plan: ColumnPlan,
    data: InputData,
    out: Path,
    *,
    single_file: bool,
    batch_rows: int = 65_536,
    rows_per_file: int = ROWS_PER_FILE,
    progress: bool = False,
) -> int:
    """Score ``data`` into ``out`` (one file, or part files in that folder); returns the rows scored."""
    _, parquet = pyarrow_modules()
    scorer = Scorer(gate, plan)
    writer, part, in_part = None, 0, 0
    total = data.count_rows() if progress else 0
    try:
        with progress_bar("scoring", progress, total) as advance:
            for batch in data.batches(batch_rows, plan.read_columns):
                scored = scorer(batch, scorer.rows, where=str(data.path))
                if writer is not None and not single_file and in_part >= rows_per_file:
                    writer.close()
                    writer, part, in_part = None, part + 1, 0
                if writer is None:
                    path = out if single_file else out / f"part-{part:05d}.parquet"
                    writer = parquet.ParquetWriter(str(path), plan.schema)
                writer.write_table(scored)
                in_part += scored.num_rows
                if advance is not None:
                    advance(scored.num_rows)
        if writer is None:  # an empty input still gives a readable (empty) table
            path = out if single_file else out / "part-00000.parquet"
            writer = parquet.ParquetWriter(str(path), plan.schema)
    finally:
        if writer is not None:
            writer.close()
    return scorer.rows
