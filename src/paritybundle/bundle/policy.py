"""The tolerance policy of ``bundle.json``: how close serving must come to research, and why these numbers.

Its own module since a serving graph may approximate research by design (``Approximation``): the
element-wise rule, the scale behind each output's tolerance, and a declared error budget are one concept,
the policy a verdict is judged under (parity/judge.py reads it; nothing else does).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .strict import BundleDocument


class Tolerance(BundleDocument):
    """Element-wise rule: ``|serve - research| <= atol + rtol * |research|``."""

    atol: float = Field(ge=0)
    rtol: float = Field(ge=0)
    # NaN matches NaN only when both sides are NaN and this is true.
    equal_nan: bool = True


class OutputScale(BundleDocument):
    """What an output's research values look like, and which bound set its absolute tolerance.

    ``rule``: ``spread`` (a share of the output's own spread), ``noise`` (the measured
    torch-vs-ONNX Runtime error, or float32 resolution at the output's magnitude, was larger),
    ``preset`` (the preset for the references' device and precision was smaller), or ``caller``
    (the export spec set this output's tolerance).
    """

    spread: float = Field(ge=0)
    max_abs: float = Field(ge=0)
    rule: Literal["spread", "noise", "preset", "caller"]


class ErrorBudget(BundleDocument):
    """A declared distribution of absolute error between serving and research outputs: at most ``p50``
    for half the elements, ``p99`` for 99% of them, ``max`` for every one (``p50 <= p99 <= max``)."""

    p50: float = Field(ge=0)
    p99: float = Field(ge=0)
    max: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ErrorBudget:
        if not self.p50 <= self.p99 <= self.max:
            raise ValueError("an error budget needs p50 <= p99 <= max")
        return self


class MeasuredError(BundleDocument):
    """What export measured of one output of a serving graph that approximates research by design: the
    absolute error's quantiles (None for a label output, whose differences are not distances)."""

    p50: float | None = Field(default=None, ge=0)
    p99: float | None = Field(default=None, ge=0)
    max: float | None = Field(default=None, ge=0)
    # Share of decisions (argmax of scores, or equal labels) that agree with research; None: no decisions.
    agreement: float | None = Field(default=None, ge=0, le=1)


class Approximation(BundleDocument):
    """The serving graph differs from research by design (a quantized or fp16 graph): its outputs are judged
    by decisions and a declared error budget instead of the element-wise tolerance (parity/judge.py).

    ``min_decision_agreement`` is the least share of decisions (argmax per sample or position; equal labels
    for integer outputs) that must agree; ``score_error`` is each float output's error budget;
    ``measured`` is what export saw on the reference rows (training/approximation.py).
    """

    serving_graph: str = Field(min_length=1, max_length=256)
    serving_precision: Literal["int8", "fp16", "bf16", "fp32"]
    min_decision_agreement: float = Field(ge=0, le=1)
    score_error: dict[str, ErrorBudget] = Field(default_factory=dict)
    measured: dict[str, MeasuredError] = Field(default_factory=dict)


class TolerancePolicy(BundleDocument):
    """How close serving must come to research, and why these numbers.

    ``reference_device``/``reference_precision`` record what produced the
    research outputs; the defaults are derived from them (see ``tolerance.py``).
    """

    written_when_set = ("approximation",)

    reference_device: str
    reference_precision: str
    default: Tolerance
    per_output: dict[str, Tolerance] = Field(default_factory=dict)
    # Share of samples whose argmax must agree, for outputs of kind "scores".
    min_decision_agreement: float = Field(ge=0, le=1)
    # A serving error this many times above the export-time error is reported
    # (as a notice, not a failure) even when it is inside tolerance.
    baseline_factor: float = Field(gt=1)
    # Per output: the research values' spread and magnitude the tolerance was derived from.
    scales: dict[str, OutputScale] = Field(default_factory=dict)
    # At most this share of samples may be decided by the near-tie rule (else the output fails:
    # its scores are too flat to tell classes apart). Bundles before this field: no bound.
    max_tie_share: float = Field(default=1.0, ge=0, le=1)
    # Set when the serving graph approximates research by design (bundles without one: None, not written).
    approximation: Approximation | None = None

    def for_output(self, name: str) -> Tolerance:
        return self.per_output.get(name, self.default)

    def budget_for(self, name: str) -> ErrorBudget | None:
        """The error budget judging output ``name`` (None: the element-wise tolerance judges it)."""
        if self.approximation is None:
            return None
        return self.approximation.score_error.get(name)
