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

from ..bundle.manifest import Tolerance, TolerancePolicy

# (atol, rtol) by reference precision. "fp32" on a CPU is the tight case.
_PRESETS: dict[tuple[str, str], tuple[float, float]] = {
    ("cpu", "fp32"): (1e-4, 1e-3),
    ("cuda", "fp32"): (3e-4, 1e-3),  # cuDNN may use TF32 convolutions by default
    ("cuda", "tf32"): (1e-3, 2e-3),
    ("cuda", "bf16"): (1e-2, 1e-2),
    ("cuda", "fp16"): (1e-2, 1e-2),
}
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

# Every decision must agree unless the research scores were a near-tie (see parity.py).
DEFAULT_MIN_DECISION_AGREEMENT = 1.0
# A serving error 100x the export-time error is worth a look even inside tolerance.
DEFAULT_BASELINE_FACTOR = 100.0


def default_tolerance(device: str = "cpu", precision: str = "fp32") -> Tolerance:
    """The element-wise tolerance for references made on ``device`` at ``precision``.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (any other accelerator is treated as ``"cuda"``).
        precision: one of ``fp32``, ``tf32``, ``bf16``, ``fp16``.

    Returns:
        The preset :class:`Tolerance`.

    Example:
        >>> default_tolerance("cpu", "fp32").atol
        0.0001
    """
    family = "cpu" if device == "cpu" else "cuda"
    if precision not in PRECISIONS:
        from ..errors import UsageError

        raise UsageError(f"unknown reference precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    # A CPU run in reduced precision is as noisy as a GPU one in that precision.
    key = (family, precision) if (family, precision) in _PRESETS else ("cuda", precision)
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
    )
