"""What a reference set can show, recorded in the manifest at export: its detection power
(:class:`Power`) and what it covers (:class:`Coverage`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .strict import BundleDocument


class Power(BundleDocument):
    """What the reference set detects, measured at export: weight noise of each of ``levels`` (a share
    of each weight tensor's spread), the smallest that failed (None: neither), and why not."""

    levels: list[float]
    detected: float | None
    # False when it could not be measured (weights in external data, no weights): see reasons.
    measured: bool
    # Per level tried, the worst element's share of its tolerance under that noise.
    worst_ratios: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)

    def sentence(self) -> str:
        if self.detected is not None:
            return f"this reference set detects a {self.detected:.1%} weight perturbation"
        tried = ", ".join(f"{level:.1%}" for level in self.levels)
        return f"this reference set detects none of {tried} weight perturbations: " + "; ".join(self.reasons)


class CategoryCoverage(BundleDocument):
    """One fitted vocabulary: its size, how many of its categories the reference rows show, and the
    categories probe rows were added for."""

    vocabulary: int = Field(ge=0)
    seen: int = Field(ge=0)
    probed: list[str] = Field(default_factory=list)


class RangeCoverage(BundleDocument):
    """One numeric column's fitted range against the range of its reference values."""

    fitted: list[float]
    reference: list[float] | None
    share: float = Field(ge=0, le=1)
    probed: bool = False


class Coverage(BundleDocument):
    """What the reference set covers. ``selected`` rows come from the ``candidates`` the caller
    offered (``all`` of them, or ``covering`` ones: every class, category, NaN and extreme first);
    ``probes`` generated rows follow them in the reference arrays, one reason each."""

    candidates: int = Field(ge=0)
    selected: int = Field(ge=0)
    probes: int = Field(ge=0)
    selection: Literal["all", "covering"]
    # Per score output: the classes the reference set's research outputs predict.
    classes: dict[str, list[int]] = Field(default_factory=dict)
    categories: dict[str, CategoryCoverage] = Field(default_factory=dict)
    # Per input: how many reference rows hold NaN.
    nan_rows: dict[str, int] = Field(default_factory=dict)
    ranges: dict[str, RangeCoverage] = Field(default_factory=dict)
    probe_reasons: list[str] = Field(default_factory=list)
