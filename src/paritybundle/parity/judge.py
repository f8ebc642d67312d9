"""How one output is judged under a bundle's tolerance policy: the one place that reads the policy.

Every comparison (the check, a live endpoint, ONNX test data, ``bundle diff``'s cross-runs,
export's fail-closed validation) gets its accumulators here, so an output is judged the
same way wherever its outputs come from.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..bundle.manifest import Manifest, TensorSpec, Tolerance, TolerancePolicy
from ..errors import UsageError
from .accumulator import OutputAccumulator


def judge_for(
    spec: TensorSpec,
    policy: TolerancePolicy,
    total_elements: int,
    *,
    overrides: Mapping[str, Tolerance] | None = None,
    baselines: Mapping[str, float] | None = None,
    histogram: bool = False,
) -> OutputAccumulator:
    """An accumulator judging output ``spec`` under ``policy`` (an override replaces its tolerance).

    The tie tolerance of a decision is the output's tolerance in the bundle (its scale-aware one),
    whatever the check-time override: loosening an output's values never loosens its decisions.

    A bundle whose serving graph approximates research by design (``policy.approximation``) judges
    each float output by its error budget (the budget's ``max`` is the element-wise bound; a check-time
    override adds its own, and the budget still holds), its decisions and labels by the declared least
    agreement.
    """
    budget = policy.budget_for(spec.name)
    tolerance = policy.for_output(spec.name)
    if budget is not None:
        tolerance = Tolerance(atol=budget.max, rtol=0.0, equal_nan=tolerance.equal_nan)
    approximation = policy.approximation
    return OutputAccumulator(
        spec.name,
        (overrides or {}).get(spec.name, tolerance),
        total_elements,
        scores=spec.kind == "scores",
        budget=budget,
        decide_labels=approximation is not None,
        min_decision_agreement=(
            policy.min_decision_agreement if approximation is None else approximation.min_decision_agreement
        ),
        baseline_max_abs=(baselines or {}).get(spec.name),
        baseline_factor=policy.baseline_factor,
        tie_tolerance=policy.for_output(spec.name),
        histogram=histogram,
        max_tie_share=policy.max_tie_share,
    )


def export_baselines(manifest: Manifest) -> dict[str, float]:
    """Per output, the torch-vs-ORT error export measured: a serving error far above it is a notice."""
    return {name: error.max_abs for name, error in manifest.export_errors.items()}


def tolerance_overrides(
    manifest: Manifest, tolerance: Tolerance | None, per_output: Mapping[str, Tolerance] | None
) -> dict[str, Tolerance]:
    """The check-time overrides, output name -> tolerance (``tolerance`` for every output first).

    Raises:
        UsageError: an override naming an output the bundle does not have.
    """
    names = [o.name for o in manifest.outputs]
    overrides = {name: tolerance for name in names} if tolerance is not None else {}
    for name, tol in (per_output or {}).items():
        if name not in names:
            raise UsageError(
                f"tolerance override names output {name!r}, but the bundle's outputs are {', '.join(names)}."
            )
        overrides[name] = tol
    return overrides
