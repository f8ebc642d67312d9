"""A scoring job's report (``bundle score --json``, and ``_paritybundle_score.json`` beside the scores)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ..bundle.strict import StrictModel
from .gate import Engine, WorkerRecord

REPORT_NAME = "_paritybundle_score.json"


class ScoreReport(StrictModel):
    """What a scoring job did: the bundle, the rows, and every worker's gate and share of the rows."""

    schema_version: Literal[1] = 1
    passed: bool
    exit_code: int
    error: str | None
    engine: Engine
    bundle: str
    bundle_version: str
    manifest_sha256: str
    input: str
    output: str
    rows_scored: int
    columns: list[str]
    started_at: datetime
    duration_s: float
    workers: list[WorkerRecord]

    def __bool__(self) -> bool:
        return self.passed
