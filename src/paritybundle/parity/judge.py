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


def judge_for(spec: TensorSpec, policy: TolerancePolicy, total_elements: int, *,
              overrides: Mapping[str, Tolerance] | None = None, baselines: Mapping[str, float] | None = None,
              histogram: bool = False) -> OutputAccumulator:
    """An accumulator judging output ``spec`` under ``policy`` (an override replaces its tolerance).

    The tie tolerance of a decision is the output's tolerance in the bundle (its scale-aware one),
    whatever the check-time override: loosening an output's values never loosens its decisions.
    """
    return OutputAccumulator(
        spec.name, (overrides or {}).get(spec.name, policy.for_output(spec.name)), total_elements,
        scores=spec.kind == "scores",
        min_decision_agreement=policy.min_decision_agreement,
        baseline_max_abs=(baselines or {}).get(spec.name),
        baseline_factor=policy.baseline_factor,
        tie_tolerance=policy.for_output(spec.name),
        histogram=histogram,
        max_tie_share=policy.max_tie_share,
    )


def export_baselines(manifest: Manifest) -> dict[str, float]:
    """Per output, the torch-vs-ORT error export measured: a serving error far above it is a notice."""
    return {name: error.max_abs for name, error in manifest.export_errors.items()}


def tolerance_overrides(manifest: Manifest, tolerance: Tolerance | None,
                        per_output: Mapping[str, Tolerance] | None) -> dict[str, Tolerance]:
    """The check-time overrides, output name -> tolerance (``tolerance`` for every output first).

    Raises:
        UsageError: an override naming an output the bundle does not have.
    """
    names = [o.name for o in manifest.outputs]
    overrides = {name: tolerance for name in names} if tolerance is not None else {}
    for name, tol in (per_output or {}).items():
        if name not in names:
            raise UsageError(f"tolerance override names output {name!r}, but the bundle's outputs are {', '.join(names)}.")
        overrides[name] = tol
    return overrides
