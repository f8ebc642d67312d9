"""Which reference rows a bundle keeps, and the probe rows it adds: coverage, not the first N rows.

A check proves parity on the rows it runs. Within the budget (``max_reference_samples``) the
selection keeps, in this order: a row for every class the research outputs predict, every
category present in each string input, a row with NaN per column that has them, the smallest
and largest row of each numeric column, then a seeded random rest. Where the data cannot show
something the preprocessing was fitted on (a category of a fitted vocabulary, a fitted bound),
*probe rows* are built from a real row: the category set, the value at the bound and just beyond
it. Their outputs come from the research path (the preprocessing's numpy steps, then the model),
they are validated at export like every reference row (fail closed, naming the column), and every
check and every server start-up runs them. The manifest's ``coverage`` says what is covered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..bundle.fitted import fitted_bounds, vocabulary
from ..bundle.manifest import CategoryCoverage, Coverage, PreprocessColumn, RangeCoverage

# More rows than this offered as reference inputs: a seeded random sample of them is considered.
MAX_CANDIDATES = 100_000
# A probe "just beyond" a fitted bound lies this share of the fitted range past it.
BEYOND_SHARE = 0.1


def candidate_rows(rows: int, seed: int = 0) -> np.ndarray | None:
    """The rows considered for the reference set (None: all of them)."""
    if rows <= MAX_CANDIDATES:
        return None
    return np.sort(np.random.default_rng(seed).choice(rows, MAX_CANDIDATES, replace=False))


# Outputs of rank > 2 are scores (one decision per position: token, pixel) only when named so: a
# [batch, seq, hidden] state is not a distribution over classes. Of rank 2, names that say "state"
# are not either (a Hugging Face pooler_output or hidden state, an embedding).
SCORE_NAMES = ("logits", "scores", "probabilities", "probs")
STATE_WORDS = ("hidden", "pooler", "embedding", "state", "features", "attention")


def is_score_like(name: str, values: np.ndarray) -> bool:
    """Floats over classes: ``[batch, classes>=2]`` unless the name says state (``pooler_output``), or
    ``[batch, ..., classes>=2]`` named ``logits``/``scores``/``probabilities`` (``start_logits`` too)."""
    if values.dtype.kind != "f" or values.ndim < 2 or values.shape[-1] < 2:
        return False
    last = name.rsplit(".", 1)[-1].lower()
    if any(last == n or last.endswith(f"_{n}") for n in SCORE_NAMES):
        return True
    return values.ndim == 2 and not any(word in last for word in STATE_WORDS)


def score_like(research: Mapping[str, np.ndarray], declared: Sequence[str] | None) -> list[str]:
    """Outputs whose argmax is a class: those declared, else those :func:`is_score_like` finds."""
    if declared is not None:
        return [name for name in declared if name in research]
    return [name for name, a in research.items() if is_score_like(name, a)]


def select_rows(
    raw: Mapping[str, np.ndarray],
    research: Mapping[str, np.ndarray],
    scores: Sequence[str],
    budget: int | None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of the rows to keep, sorted: covering rows first in priority, then a random rest."""
    rows = len(next(iter(raw.values())))
    if budget is None or rows <= budget:
        return np.arange(rows)
    wanted: dict[int, None] = {}  # insertion-ordered set: the priority order
    for name in scores:
        predicted = np.asarray(research[name]).argmax(axis=-1).reshape(rows, -1)
        for label in np.unique(predicted):
            wanted.setdefault(int(np.flatnonzero((predicted == label).any(axis=1))[0]))
    for values in raw.values():
        if values.dtype.kind in "US":
            column = values.reshape(rows, -1)
            for category in np.unique(column):
                wanted.setdefault(int(np.flatnonzero((column == category).any(axis=1))[0]))
    for values in raw.values():
        if values.dtype.kind == "f":
            nan_rows = np.flatnonzero(np.isnan(values.reshape(rows, -1)).any(axis=1))
            if nan_rows.size:
                wanted.setdefault(int(nan_rows[0]))
    for values in raw.values():
        if values.dtype.kind in "fiu":
            for column in _columns(values):
                finite = (
                    np.where(np.isfinite(column), column, np.nan) if column.dtype.kind == "f" else column.astype(float)
                )
                if np.isnan(finite).all():
                    continue
                wanted.setdefault(int(np.nanargmin(finite)))
                wanted.setdefault(int(np.nanargmax(finite)))
    chosen = list(wanted)[:budget]
    if len(chosen) < budget:
        remaining = np.random.default_rng(seed).permutation(np.setdiff1d(np.arange(rows), chosen))
        chosen += [int(i) for i in remaining[: budget - len(chosen)]]
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _columns(values: np.ndarray) -> list[np.ndarray]:
    """Per row, one value per numeric column: a 1-D input is one column, ``[N, F]`` has F, a
    higher-rank input (an image) is summarised by each row's mean."""
    if values.ndim == 1:
        return [values]
    if values.ndim == 2:
        return [values[:, f] for f in range(values.shape[1])]
    flat = values.reshape(len(values), -1).astype(np.float64)
    return [np.nanmean(np.where(np.isfinite(flat), flat, np.nan), axis=1)]


@dataclass
class Probes:
    """Rows built from a real one, with why each exists."""

    raw: dict[str, np.ndarray] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.reasons)


def missing_value_step(column: PreprocessColumn) -> str | None:
    """The first step of ``column`` that replaces a missing value, as "kind (its fill values)"; None if none."""
    for step in column.steps:
        if step.nan == "replaced":
            fill = {k: v for k, v in step.params.items() if k in ("strategy", "fill", "statistics_", "value", "values")}
            return f"{step.kind}" + (f" ({_short(fill)})" if fill else "")
    return None


def _short(params: Mapping[str, object]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in params.items())
    return text if len(text) <= 120 else text[:117] + "..."


def build_probes(raw: Mapping[str, np.ndarray], columns: Sequence[PreprocessColumn]) -> Probes:
    """Probe rows for what the selected rows ``raw`` do not show of the fitted ``columns``."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in raw}
    probes = Probes()
    base = {name: values[:1] for name, values in raw.items()}

    def add(name: str, value: np.ndarray, reason: str) -> None:
        for other, values in base.items():
            parts[other].append(value if other == name else values)
        probes.reasons.append(reason)

    for column in columns:
        values = raw.get(column.input)
        if values is None:
            continue
        categories = vocabulary(column)
        if categories is not None and values.dtype.kind in "US":
            present = set(np.unique(values).tolist())
            for category in categories:
                if category not in present:
                    # np.full, not full_like: the rows' string dtype may be too narrow for this category.
                    add(
                        column.input,
                        np.full(values[:1].shape, category),
                        f"{column.input} = {category!r}: in the fitted vocabulary, never in the reference rows",
                    )
            continue
        imputer = missing_value_step(column)
        if imputer is not None and values.dtype.kind == "f":
            # The path a missing value takes is probed whether or not the rows hold one: a fill value that
            # changed (a median become 0) is otherwise invisible to every check of these references.
            flat = values.reshape(len(values), -1)
            for feature in range(flat.shape[1]):
                if np.isnan(flat[:, feature]).any():
                    continue
                row = values[:1].copy()
                row.reshape(1, -1)[:, feature] = np.nan
                label = f"{column.input}[{feature}]" if values.ndim > 1 else column.input
                add(
                    column.input,
                    row,
                    f"{label} = NaN: missing, replaced by the fitted {imputer}; never missing in the reference rows",
                )
        bounds = fitted_bounds(column)
        if bounds is None or values.dtype.kind != "f":
            continue
        for feature, (low, high) in enumerate(zip(*bounds, strict=True)):
            observed = values.reshape(len(values), -1)[:, feature] if values.ndim > 1 else values
            observed = observed[np.isfinite(observed)]
            span = (high - low) or 1.0
            for bound, beyond, reaches in (
                (low, low - BEYOND_SHARE * span, observed.size and observed.min() <= low),
                (high, high + BEYOND_SHARE * span, observed.size and observed.max() >= high),
            ):
                if reaches:
                    continue
                for value, where in ((bound, "at"), (beyond, "just beyond")):
                    row = values[:1].copy()
                    row.reshape(1, -1)[:, feature] = value
                    label = f"{column.input}[{feature}]" if values.ndim > 1 else column.input
                    add(column.input, row, f"{label} = {value:.6g}, {where} the fitted bound {bound:.6g}")
    if not probes.reasons:
        return Probes()
    probes.raw = {name: np.concatenate(rows, axis=0) for name, rows in parts.items()}
    return probes


def describe(
    raw: Mapping[str, np.ndarray],
    research: Mapping[str, np.ndarray],
    scores: Sequence[str],
    *,
    candidates: int,
    selected: int,
    probes: Probes,
    columns: Sequence[PreprocessColumn],
    selection: str,
) -> Coverage:
    """What the reference set (selected rows and probes together, as ``raw``/``research``) covers."""
    rows = len(next(iter(raw.values())))
    classes = {name: sorted(int(c) for c in np.unique(np.asarray(research[name]).argmax(axis=-1))) for name in scores}
    categories, ranges = {}, {}
    for column in columns:
        values = raw.get(column.input)
        if values is None:
            continue
        vocab = vocabulary(column)
        if vocab is not None and values.dtype.kind in "US":
            seen = set(np.unique(values[:selected]).tolist())
            probed = [
                r.split(" = ", 1)[1].split(":", 1)[0].strip("'")
                for r in probes.reasons
                if r.startswith(f"{column.input} = ")
            ]
            categories[column.input] = CategoryCoverage(
                vocabulary=len(vocab), seen=sum(c in seen for c in vocab), probed=probed
            )
        bounds = fitted_bounds(column)
        if bounds is not None and values.dtype.kind == "f":
            for feature, (low, high) in enumerate(zip(*bounds, strict=True)):
                observed = values.reshape(rows, -1)[:selected, feature]
                observed = observed[np.isfinite(observed)]
                label = f"{column.input}[{feature}]" if values.ndim > 1 else column.input
                covered = (
                    0.0
                    if not observed.size or high <= low
                    else float(max(0.0, min(observed.max(), high) - max(observed.min(), low)) / (high - low))
                )
                ranges[label] = RangeCoverage(
                    fitted=[float(low), float(high)],
                    reference=[float(observed.min()), float(observed.max())] if observed.size else None,
                    share=min(covered, 1.0),
                    probed=any(
                        r.startswith(f"{label} = ") and not r.startswith(f"{label} = NaN") for r in probes.reasons
                    ),
                )
    nan_rows = {
        name: int(np.isnan(values.reshape(rows, -1)).any(axis=1).sum())
        for name, values in raw.items()
        if values.dtype.kind == "f" and np.isnan(values).any()
    }
    return Coverage(
        candidates=candidates,
        selected=selected,
        probes=probes.rows,
        selection=selection,  # type: ignore[arg-type]
        classes=classes,
        categories=categories,
        nan_rows=nan_rows,
        ranges=ranges,
        probe_reasons=probes.reasons,
    )


def merge(parts: Sequence[Coverage], *, candidates: int, selected: int) -> Coverage:
    """One coverage for reference groups described one by one (classes and NaN rows over all of them)."""
    classes: dict[str, set[int]] = {}
    nan_rows: dict[str, int] = {}
    for part in parts:
        for name, seen in part.classes.items():
            classes.setdefault(name, set()).update(seen)
        for name, count in part.nan_rows.items():
            nan_rows[name] = nan_rows.get(name, 0) + count
    return Coverage(
        candidates=candidates,
        selected=selected,
        probes=0,
        selection="all" if selected == candidates else "covering",
        classes={name: sorted(seen) for name, seen in classes.items()},
        nan_rows=nan_rows,
    )
