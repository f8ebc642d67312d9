"""Decision agreement for outputs of class scores: does serving pick the class research picked?"""

from __future__ import annotations

import numpy as np

from ..bundle.manifest import Tolerance
from .results import MAX_LISTED_SAMPLES, DecisionStats


def decision_agreement(
    serve: np.ndarray, research: np.ndarray, tolerance: Tolerance, min_agreement: float
) -> DecisionStats:
    """Share of decisions whose argmax over the last axis agrees.

    A ``[batch, classes]`` output makes one decision per sample; a ``[batch, ..., classes]`` output
    (logits per token, per pixel) one per position, so a single flipped token counts. A decision whose
    serving argmax differs is a tie (not a disagreement) when the research scores of the two classes
    are within tolerance of each other: noise may legitimately flip a near-tie, and the element-wise
    check still applies. ``disagreeing_samples`` lists samples (batch rows) holding a disagreement.
    """
    # argmax is the same on the original dtype (casting is monotonic); only margins need float64.
    serve, research = np.asarray(serve), np.asarray(research)
    samples = research.shape[0] if research.ndim else 0
    per_position = research.ndim > 2
    if samples == 0 or research.size == 0:  # a scalar, no rows, or no classes: nothing to decide
        return DecisionStats(
            samples=0,
            agreeing=0,
            ties=0,
            agreement=1.0,
            min_agreement=min_agreement,
            disagreeing_samples=[],
            per_position=per_position,
        )
    if per_position:
        flat_serve, flat_research = serve.reshape(-1, serve.shape[-1]), research.reshape(-1, research.shape[-1])
    else:
        flat_serve, flat_research = serve.reshape(samples, -1), research.reshape(samples, -1)
    decisions = flat_research.shape[0]
    research_top = np.argmax(flat_research, axis=1)
    serve_top = np.argmax(flat_serve, axis=1)
    differs = research_top != serve_top
    rows = np.arange(decisions)
    # (astype(None) is float64 too, and `/` below gives the same whole numbers: no mutants there.)
    top_score = flat_research[rows, research_top].astype(np.float64)  # pragma: no mutate
    rival_score = flat_research[rows, serve_top].astype(np.float64)  # pragma: no mutate
    margin = np.abs(top_score - rival_score)
    bound = tolerance.atol + tolerance.rtol * np.abs(top_score)
    tie = differs & (margin <= 2 * bound)
    disagree = differs & ~tie
    agreeing = decisions - int(disagree.sum())
    positions = decisions // samples  # pragma: no mutate (decisions > 0, so samples > 0)
    disagreeing = np.unique(np.flatnonzero(disagree) // positions)
    return DecisionStats(
        samples=decisions,
        agreeing=agreeing,
        ties=int(tie.sum()),
        agreement=agreeing / decisions,
        min_agreement=min_agreement,
        disagreeing_samples=[int(i) for i in disagreeing[:MAX_LISTED_SAMPLES]],
        per_position=per_position,
    )
