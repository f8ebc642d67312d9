"""Element-wise error maths: pure functions from arrays to arrays or numbers.

* Arrays are upcast to float64 before subtracting, so the comparison adds no error.
* NaN matches only NaN, and only when the tolerance's ``equal_nan`` is true.
* An infinity matches only the same infinity.
* Relative error divides by ``max(|research|, 1e-12)`` so zeros do not divide by zero.
* Integer, bool and string outputs must match exactly.
"""

from __future__ import annotations

import math

import numpy as np

REL_EPSILON = 1e-12


def is_exact_dtype(array: np.ndarray) -> bool:
    """Integer, bool and string data is compared exactly."""
    return np.asarray(array).dtype.kind not in "fc"


def absolute_error(serve: np.ndarray, research: np.ndarray, equal_nan: bool = True) -> np.ndarray:
    """``|serve - research|`` with NaN and inf handled by the rules above.

    Matching non-finite values give 0; mismatching ones give ``inf``.
    """
    serve, research = np.asarray(serve), np.asarray(research)
    # Subtracting into float64 directly upcasts without two float64 copies of the inputs.
    with np.errstate(invalid="ignore", over="ignore"):  # pragma: no mutate (warnings only)
        diff = np.asarray(np.subtract(serve, research, dtype=np.float64))  # 0-d inputs give a scalar
    np.abs(diff, out=diff)
    if serve.dtype.kind in "iub" and research.dtype.kind in "iub":
        # float64 rounds integers past 2**53 (hashed ids, timestamps in ns): two that differ there
        # may subtract to 0, yet differ by at least 1. (numpy compares the integers themselves exactly.)
        np.maximum(diff, 1.0, out=diff, where=serve != research)
        return diff
    # NaN and inf on either side propagate into the difference: one pass finds them.
    if np.isfinite(diff).all():
        return diff
    finite = np.isfinite(serve) & np.isfinite(research)
    matched = np.isinf(serve) & np.isinf(research) & (serve == research)  # the same infinity
    if equal_nan:
        matched |= np.isnan(serve) & np.isnan(research)
    return np.where(finite, diff, np.where(matched, 0.0, np.inf))


def magnitude_of(research: np.ndarray) -> np.ndarray:
    """``|research|`` in float64, non-finite values counted as 0 (their bound is atol)."""
    research = np.asarray(research)
    magnitude = np.abs(research, dtype=np.float64)
    # Finiteness is checked on the source (float32 is half the bytes of the float64 result); integers
    # are always finite. (A shortcut: mutation testing skips the line, docs/mutation.md.)
    if research.dtype.kind == "f" and not np.isfinite(research).all():  # pragma: no mutate
        magnitude[~np.isfinite(magnitude)] = 0.0
    return magnitude


def relative_to(abs_error: np.ndarray, magnitude: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    divisor = np.maximum(magnitude, REL_EPSILON, out=out)  # pragma: no mutate (where, not what)
    return np.divide(abs_error, divisor, out=divisor)  # pragma: no mutate (where, not what)


def relative_error(abs_error: np.ndarray, research: np.ndarray) -> np.ndarray:
    """Absolute error over ``max(|research|, 1e-12)``.

    Where research is NaN or inf the error is 0 (matched) or inf (mismatched), so the
    magnitude used there does not change the result.
    """
    return relative_to(abs_error, magnitude_of(research))


def largest(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values (unordered). A strided sample picks a threshold first, so a
    large array is filtered to a few candidates before the exact selection."""
    flat = values.reshape(-1)
    if k <= 0:
        return flat[:0]
    if flat.size <= k:
        return flat
    # Mutation testing skips this block (docs/mutation.md): a threshold that misses falls back to
    # the full array, so the sampling changes how fast the answer comes, never the answer.
    # pragma: no mutate start
    if flat.size > 4096:
        sample = flat[::16]
        # Aim a little low, so that the candidates very likely include all k.
        cut = int(max(0.0, 1.0 - 1.5 * k / flat.size) * (sample.size - 1))
        threshold = np.partition(sample, cut)[cut]
        candidates = flat[flat >= threshold]
        if candidates.size >= k:
            flat = candidates
    # pragma: no mutate end
    return np.partition(flat, flat.size - k)[flat.size - k :]


def p99_position(n: int) -> tuple[int, float]:
    """``np.percentile``'s linear interpolation: the lower order statistic and the fraction."""
    position = 0.99 * (n - 1)
    low = int(math.floor(position))
    return low, position - low


def p99_from_top(top: np.ndarray, n: int) -> float:
    """p99 of ``n`` values given (at least) their ``n - low`` largest."""
    low, fraction = p99_position(n)
    ordered = np.sort(top)[-(n - low) :]
    lo_value = float(ordered[0])
    hi_value = float(ordered[1]) if ordered.size > 1 else lo_value
    return lo_value + (hi_value - lo_value) * fraction if fraction and hi_value != lo_value else lo_value


def percentile99(values: np.ndarray) -> float:
    """Exactly ``np.percentile(values, 99)`` (linear interpolation), selecting only the top 1%.

    NaN-free input is assumed (errors map NaN mismatches to inf).
    """
    n = values.size
    low, _ = p99_position(n)
    return p99_from_top(largest(values, n - low), n)
