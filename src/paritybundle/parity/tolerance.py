"""Default tolerance policies, derived from what produced the references.

The numbers come from measurements, not taste (``../shared/data/gpu-references``;
the tests that hold them are named below):

* torch on a CPU vs ONNX Runtime on a CPU, fp32: 1e-7 to 3e-7 absolute error on
  outputs of magnitude ~1, a few float32 ulps in general: the digits CNN's logits
  (up to 29) differ by up to 7.6e-6, and ORT's thread count, graph optimisation
  level or batch size move them by the same order. ``atol=1e-5, rtol=1e-4`` uses a
  third of its bound on that model (too little headroom); ``atol=1e-4, rtol=1e-3``
  uses 3%, yet 0.1% weight noise, weights rounded to fp16, or dropout and batch-norm
  left in training mode all fail it (``tests/test_check.py``), as do a shifted scaler,
  swapped channels and a changed resize (``tests/test_preprocess_bundle.py``).
* CUDA references with torch's defaults (TF32 convolutions): up to ~1e-4.
* CUDA with TF32 matmuls: up to ~4e-4; ``atol 1e-4/rtol 1e-3`` flags 2-3% of elements.
* CUDA under bf16/fp16 autocast: 1e-3 to 4e-3, every argmax still agreeing.

The CUDA presets are calibrated on the H100 measurements (``tests/test_gpu_references.py``):
legitimate GPU noise uses at most 35% of its preset (mlp under bf16), and 5% weight noise
fails under every precision; 1% weight noise fails at fp32 and tf32 but is the size of
bf16 autocast's own noise, so bf16 references cannot tell it apart.
"""

from __future__ import annotations

import math

import numpy as np

from ..bundle.manifest import OutputScale, Tolerance, TolerancePolicy

# (atol, rtol) by reference precision. "fp32" on a CPU is the tight case.
_PRESETS: dict[tuple[str, str], tuple[float, float]] = {
    ("cpu", "fp32"): (1e-4, 1e-3),
    ("cuda", "fp32"): (3e-4, 1e-3),  # cuDNN may use TF32 convolutions by default
    ("cuda", "tf32"): (1e-3, 2e-3),
    ("cuda", "bf16"): (1e-2, 1e-2),
    ("cuda", "fp16"): (1e-2, 1e-2),
    # Research outputs of an int8 graph (a quantized model as research evaluated it). Its integer kernels
    # are exact at the bundle's recorded settings (a static QDQ MLP: 0 difference across thread counts,
    # batch sizes and fused levels); 5% covers requantisation rounding on another CPU's kernels. Not a
    # change of optimisation level: emulated in float (optimisation disabled) the same graph moved logits
    # of spread 93 by up to 4.6, which no element-wise tolerance tells from a defect, so the check runs
    # at the recorded level. A serving graph quantized from fp32 research is an approximation by design
    # instead (ExportSpec.serving_model, training/approximation.py).
    ("cpu", "int8"): (5e-2, 5e-2),
    ("cuda", "int8"): (5e-2, 5e-2),
}
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "int8")

# Every decision must agree unless the research scores were a near-tie (parity/decision.py), and
# at most 1% of samples may be decided that way.
DEFAULT_MIN_DECISION_AGREEMENT = 1.0
DEFAULT_MAX_TIE_SHARE = 0.01

# Scale-aware absolute tolerance (per output): a fixed atol is meaningless for outputs far smaller
# than it (logits of 1e-9, probabilities of 1e-4): the tolerance would exceed the outputs
# themselves. An output's atol is SPREAD_SHARE of its robust spread (p99 - p1 of its research
# values), never below the noise floor (NOISE_FACTOR x the torch-vs-ONNX Runtime error measured
# at export, and FLOAT32_ULPS float32 steps at the output's largest magnitude: the error a change
# of threads or optimisation level may add where export saw none), never above the preset. The
# measurements behind these numbers: docs/concepts/parity.md ("What parity holds means"), and `python -m bench verdict`.
SPREAD_SHARE = 0.001
NOISE_FACTOR = 10.0
FLOAT32_ULPS = 64
_FLOAT32_EPS = float(np.finfo(np.float32).eps)
# A serving error 100x the export-time error is worth a look even inside tolerance.
DEFAULT_BASELINE_FACTOR = 100.0


def default_tolerance(device: str = "cpu", precision: str = "fp32") -> Tolerance:
    """The element-wise tolerance for references made on ``device`` at ``precision``.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (any other accelerator is treated as ``"cuda"``).
        precision: one of ``fp32``, ``tf32``, ``bf16``, ``fp16``, ``int8``.

    Returns:
        The preset :class:`Tolerance`.

    Example:
        >>> default_tolerance("cpu", "fp32").atol
        0.0001
    """
    if precision not in PRECISIONS:
        from ..errors import UsageError

        raise UsageError(f"unknown reference precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    # Any accelerator counts as CUDA; a CPU run in reduced precision is as noisy as a GPU one in it.
    key = ("cpu", precision) if device == "cpu" and ("cpu", precision) in _PRESETS else ("cuda", precision)
    atol, rtol = _PRESETS[key]
    return Tolerance(atol=atol, rtol=rtol)


def default_policy(
    device: str = "cpu",
    precision: str = "fp32",
    per_output: dict[str, Tolerance] | None = None,
    min_decision_agreement: float | None = None,
) -> TolerancePolicy:
    """The full default policy for references made on ``device`` at ``precision``."""
    if min_decision_agreement is None:
        # Reduced precision can flip genuinely close decisions; allow 1 in 100.
        min_decision_agreement = DEFAULT_MIN_DECISION_AGREEMENT if precision in ("fp32", "tf32") else 0.99
    return TolerancePolicy(
        reference_device=device,
        reference_precision=precision,
        default=default_tolerance(device, precision),
        per_output=per_output or {},
        min_decision_agreement=min_decision_agreement,
        baseline_factor=DEFAULT_BASELINE_FACTOR,
        max_tie_share=DEFAULT_MAX_TIE_SHARE,
    )


def output_scale(research: np.ndarray) -> tuple[float, float]:
    """``(spread, max_abs)`` of an output's research values: spread is p99 - p1 of the finite values
    (robust to a few outliers), max_abs the largest finite magnitude; (0, 0) when none is finite."""
    values = np.asarray(research, dtype=np.float64)
    values = values[np.isfinite(values)]  # a boolean mask flattens
    if values.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(values, [1, 99])
    return float(high - low), float(np.abs(values).max())


def scaled_tolerance(preset: Tolerance, spread: float, max_abs: float, export_error: float) -> tuple[Tolerance, str]:
    """The tolerance of one output, and the rule that set its atol (``spread``, ``noise`` or ``preset``).

    Example:
        >>> tolerance, rule = scaled_tolerance(Tolerance(atol=1e-4, rtol=1e-3), 2e-9, 1e-9, 1e-16)
        >>> rule, tolerance.atol < 1e-10  # 1% of logits spread over 2e-9, not a fixed 1e-4
        ('spread', True)
    """
    floor = max(
        NOISE_FACTOR * export_error if math.isfinite(export_error) else 0.0, FLOAT32_ULPS * _FLOAT32_EPS * max_abs
    )
    share = SPREAD_SHARE * spread
    if min(share, preset.atol) >= preset.atol or floor >= preset.atol:
        return preset, "preset"
    atol, rule = (share, "spread") if share >= floor else (floor, "noise")
    return Tolerance(atol=atol, rtol=preset.rtol, equal_nan=preset.equal_nan), rule


def scale_policy(
    policy: TolerancePolicy, research: dict[str, np.ndarray], export_errors: dict[str, float], set_by_caller: set[str]
) -> TolerancePolicy:
    """``policy`` with a per-output tolerance derived from each output's research values and measured
    error, recorded with the scale behind it; outputs whose tolerance the caller set keep it."""
    per_output, scales = dict(policy.per_output), {}
    for name, values in research.items():
        if np.asarray(values).dtype.kind != "f":  # strings, integers, booleans: compared exactly, no scale
            continue
        spread, max_abs = output_scale(values)
        if name in set_by_caller:
            scales[name] = OutputScale(spread=spread, max_abs=max_abs, rule="caller")
            continue
        tolerance, rule = scaled_tolerance(policy.default, spread, max_abs, export_errors.get(name, 0.0))
        if rule != "preset":
            per_output[name] = tolerance
        scales[name] = OutputScale(spread=spread, max_abs=max_abs, rule=rule)  # type: ignore[arg-type]
    return policy.model_copy(update={"per_output": per_output, "scales": scales})


def tolerance_exceeds_outputs(policy: TolerancePolicy, overrides: dict[str, Tolerance] | None = None) -> list[str]:
    """Outputs whose atol (as checked: an override counts) reaches the spread of their research values:
    any model whose outputs stay in that range passes, so the check cannot tell models apart."""
    names = []
    for name, scale in policy.scales.items():
        budget = policy.budget_for(name)
        tolerance = (overrides or {}).get(name, policy.for_output(name))
        # A declared budget judges its output instead: half its errors may reach p50 (parity/judge.py).
        bound = tolerance.atol if budget is None or name in (overrides or {}) else budget.p50
        if scale.spread > 0 and bound >= scale.spread:
            names.append(name)
    return names
