"""Decision agreement for outputs of class scores: does serving pick the class research picked?"""

from __future__ import annotations

import numpy as np

from ..bundle.manifest import Tolerance
from .results import MAX_LISTED_SAMPLES, DecisionStats


def decision_agreement(serve: np.ndarray, research: np.ndarray, tolerance: Tolerance, min_agreement: float) -> DecisionStats:
    """Share of samples whose argmax over the last axis agrees.

    A sample whose serving argmax differs is a tie (not a disagreement) when the
    research scores of the two classes are within tolerance of each other: noise
    may legitimately flip a near-tie, and the element-wise check still applies.
    """
    # argmax is the same on the original dtype (casting is monotonic); only margins need float64.
    serve, research = np.asarray(serve), np.asarray(research)
    samples = research.shape[0] if research.ndim else 0
    flat_serve = serve.reshape(samples, -1) if samples else serve.reshape(0, 1)
    flat_research = research.reshape(samples, -1) if samples else research.reshape(0, 1)
    research_top = np.argmax(flat_research, axis=1)
    serve_top = np.argmax(flat_serve, axis=1)
    differs = research_top != serve_top
    rows = np.arange(samples)
    top_score = flat_research[rows, research_top].astype(np.float64)
    rival_score = flat_research[rows, serve_top].astype(np.float64)
    margin = np.abs(top_score - rival_score)
    bound = tolerance.atol + tolerance.rtol * np.abs(top_score)
    tie = differs & (margin <= 2 * bound)
    disagree = differs & ~tie
    agreeing = samples - int(disagree.sum())
    return DecisionStats(
        samples=samples,
        agreeing=agreeing,
        ties=int(tie.sum()),
        agreement=agreeing / samples if samples else 1.0,
        min_agreement=min_agreement,
        disagreeing_samples=[int(i) for i in np.flatnonzero(disagree)[:MAX_LISTED_SAMPLES]],
    )
