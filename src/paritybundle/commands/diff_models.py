"""What ``bundle diff`` returns: :class:`DiffReport` and the models in it (the ``--json`` schema, version 1)."""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from ..bundle.manifest import TensorSpec
from ..bundle.strict import StrictModel
from ..parity.results import OutputComparison
from ..runtime.drift import DriftItem

DIFF_SCHEMA_VERSION: Final = 1


class BundleSide(StrictModel):
    path: str
    name: str
    version: str
    created_at: datetime


class SpecDifference(StrictModel):
    """One input or output that differs between A and B."""

    kind: Literal["input", "output"]
    name: str
    a: TensorSpec | None
    b: TensorSpec | None
    # True when a client of A would break against B.
    breaking: bool
    detail: str


class Compatibility(StrictModel):
    """Can B replace A behind the same endpoint (same names, dtypes, compatible shapes)?"""

    compatible: bool
    problems: list[str]
    notes: list[str]


class StatisticChange(StrictModel):
    """One fitted statistic or setting of one preprocessing step that moved."""

    input: str
    step: int
    kind: str
    key: str
    summary: str
    max_abs_change: float | None = None
    max_rel_change: float | None = None


class PreprocessingDiff(StrictModel):
    a_source: str | None
    b_source: str | None
    structure: list[str]
    statistics: list[StatisticChange]


class GraphSummary(StrictModel):
    file: str
    bytes: int
    opset: int
    ir_version: int
    nodes: int
    parameters: int
    operators: dict[str, int]


class GraphDiff(StrictModel):
    stage: Literal["pipeline", "model", "preprocess"]
    a: GraphSummary | None
    b: GraphSummary | None
    # operator -> [count in A, count in B], only those that differ
    operator_changes: dict[str, list[int]]


class FieldChange(StrictModel):
    what: str
    a: str | None
    b: str | None


class BehaviourRun(StrictModel):
    """One bundle's pipeline on the other's reference inputs, judged by A's tolerance."""

    direction: Literal["b_on_a", "a_on_b"]
    description: str
    samples: int
    passed: bool
    outputs: list[OutputComparison]
    problem: str | None = None

    @property
    def flips(self) -> int:
        return sum(c.decision.samples - c.decision.agreeing for c in self.outputs if c.decision is not None)


class DiffReport(StrictModel):
    """The result of ``bundle diff``; truthy when it exits 0 (see ``passed``)."""

    schema_version: Literal[1] = DIFF_SCHEMA_VERSION
    a: BundleSide
    b: BundleSide
    compatibility: Compatibility
    specs: list[SpecDifference]
    preprocessing: PreprocessingDiff | None
    graphs: list[GraphDiff]
    tolerance: list[FieldChange]
    # How strong each bundle's own verdict is: detection power and coverage, A beside B (all shown).
    strength: list[FieldChange] = []
    # A's lock against B's, classified as by `bundle env diff` ("locked" is A, "running" is B).
    environment: list[DriftItem]
    provenance: list[FieldChange]
    behaviour: list[BehaviourRun]
    # Fitted values of steps that replace missing values which changed while neither reference set holds a
    # missing value there: no run exercised them, so "reproduces" cannot be claimed (one sentence each).
    unexercised: list[str] = []
    # B reproduces A within A's tolerance, in both directions, and no changed fitted value went unexercised.
    reproduces: bool
    expect_change: bool
    # The exit-0 condition: compatible, and reproducing unless a change was expected.
    passed: bool
    verdict: str

    def __bool__(self) -> bool:
        return self.passed
