"""Errors counted in fixed log10 bins: the plots of ``check --html``, and a bound on a budget's median
past the elements an accumulator keeps every error of (parity/accumulator.py)."""

from __future__ import annotations

import math

import numpy as np

HISTOGRAM_LOW, HISTOGRAM_HIGH, HISTOGRAM_STEP = -12.0, 4.0, 0.25


class LogHistogram:
    """Streams values into the fixed log10 bins of :class:`ErrorHistogram`."""

    bins = int((HISTOGRAM_HIGH - HISTOGRAM_LOW) / HISTOGRAM_STEP)

    def __init__(self) -> None:
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.zero = 0

    def add(self, values: np.ndarray) -> None:
        # Errors are never NaN (a NaN mismatch is an infinite error): what is not positive is zero.
        positive = values[values > 0]
        self.zero += int(values.size - positive.size)
        if positive.size:
            position = (np.log10(positive) - HISTOGRAM_LOW) / HISTOGRAM_STEP
            index = np.clip(position, 0, self.bins - 1).astype(np.int64)  # inf lands in the last bin
            self.counts += np.bincount(index, minlength=self.bins)

    def median_bound(self) -> float:
        """An upper bound of the median of the values added: the upper edge of the bin holding it."""
        total = self.zero + int(self.counts.sum())
        rank = total // 2 + 1  # the higher middle value bounds the median of an even count too
        if rank <= self.zero:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self.counts), rank - self.zero))
        return math.inf if k == self.bins - 1 else 10.0 ** (HISTOGRAM_LOW + (k + 1) * HISTOGRAM_STEP)
