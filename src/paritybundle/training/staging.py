"""Reference rows before the bundle is written: the research preprocessing run on the raw inputs
(:class:`StagedPreprocessing`), and the covering rows kept within the budget, with probe rows for what they
do not show (:mod:`.coverage`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bundle.manifest import Coverage
from ..errors import SpecError, UsageError
from . import coverage
from .inputs import first_paragraph, length, to_numpy

log = logging.getLogger("paritybundle.export")


@dataclass
class StagedPreprocessing:
    """Preprocessing ready to freeze: the raw reference inputs and the research features."""

    preprocessor: Any
    raw: dict[str, np.ndarray]
    features: dict[str, np.ndarray]
    # Why each probe row (the last rows of ``raw``) exists.
    probe_reasons: list[str] = field(default_factory=list)


def stage_groups(spec: Any, groups: list[dict[str, np.ndarray]]) -> list[StagedPreprocessing] | None:
    """``spec.preprocess`` wrapped once and its research path run on each group of raw reference inputs (images
    of several sizes, say): None without preprocessing.

    Raises:
        SpecError: the groups' features differ in shape (the model reads one).
    """
    if spec.preprocess is None:
        return None
    from .preprocessing.adapt import as_preprocessor

    preprocessor = as_preprocessor(spec.preprocess, list(groups[0]), spec)
    staged = [stage_preprocessing(preprocessor, inputs) for inputs in groups]
    shapes = [{name: list(a.shape[1:]) for name, a in s.features.items()} for s in staged]
    if any(shape != shapes[0] for shape in shapes):
        raise SpecError(
            f"the preprocessing makes features of different shapes from the reference groups ({shapes[0]} "
            f"and {next(s for s in shapes if s != shapes[0])}); the model reads one shape, so resize to "
            "one size in the preprocessing."
        )
    return staged


def stage_preprocessing(preprocessor: Any, inputs: dict[str, np.ndarray]) -> StagedPreprocessing:
    """Run ``preprocessor``'s research path on one group of raw reference inputs."""
    raw = preprocessor.prepare_raw(inputs)
    try:
        features = preprocessor.research(raw)
    except (SpecError, UsageError):
        raise
    except Exception as exc:
        raise SpecError(
            f"the preprocessing raised on the reference inputs ({type(exc).__name__}: "
            f"{first_paragraph(exc)}); check them against what it was fitted on."
        ) from None
    features = {name: np.ascontiguousarray(to_numpy(value, name)) for name, value in features.items()}
    clash = set(features) & set(raw) - set(getattr(preprocessor, "passthrough", ()))
    if clash:
        raise SpecError(
            f"the preprocessing output {sorted(clash)[0]!r} has the name of a raw input; rename one of them."
        )
    if any(len(f) != length(raw) for f in features.values()):
        raise SpecError("the preprocessing returned a different number of rows than it was given.")
    return StagedPreprocessing(preprocessor, raw, features)


def candidates_of(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    pool = coverage.candidate_rows(length(inputs))
    return inputs if pool is None else take(inputs, pool)


def take(arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(a[rows]) for name, a in arrays.items()}


def cover(
    spec: Any,
    inputs: dict[str, np.ndarray],
    staged: StagedPreprocessing | None,
    research: dict[str, np.ndarray],
    candidates: int,
    run_model: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]] | None,
) -> tuple[dict[str, np.ndarray], StagedPreprocessing | None, dict[str, np.ndarray], Coverage]:
    """Keep covering rows within the budget, then add probe rows for what they do not show of the
    fitted preprocessing (their outputs from the research path): see :mod:`.coverage`."""
    raw = staged.raw if staged is not None else inputs
    scores = coverage.score_like(research, spec.score_outputs)
    keep = coverage.select_rows(raw, research, scores, spec.max_reference_samples)
    selection = "all" if len(keep) == length(raw) else "covering"
    raw, research = take(raw, keep), take(research, keep)
    columns = staged.preprocessor.columns() if staged is not None else []
    probes = coverage.Probes()
    if staged is not None and run_model is not None:
        probes = (
            coverage.Probes(*staged.preprocessor.probes(raw))
            if hasattr(staged.preprocessor, "probes")
            else coverage.build_probes(raw, columns)
        )
    if staged is not None:
        features = take(staged.features, keep)
        if probes.rows:
            probe_features = {
                name: np.ascontiguousarray(to_numpy(v, name))
                for name, v in staged.preprocessor.research(probes.raw).items()
            }
            probe_outputs = dict(zip(research, run_model(probe_features), strict=True))  # type: ignore[misc]
            raw = {name: np.concatenate([raw[name], probes.raw[name]]) for name in raw}
            features = {name: np.concatenate([features[name], probe_features[name]]) for name in features}
            research = {name: np.concatenate([research[name], probe_outputs[name]]) for name in research}
        staged = StagedPreprocessing(staged.preprocessor, raw, features, probes.reasons)
    covered = coverage.describe(
        raw,
        research,
        scores,
        candidates=candidates,
        selected=len(keep),
        probes=probes,
        columns=columns,
        selection=selection,
    )
    if probes.rows:
        log.info("%s: %d probe rows added to the reference set (%s)", spec.name, probes.rows, "; ".join(probes.reasons))
    return (raw if staged is None else staged.raw), staged, research, covered


def group_budgets(budget: int | None, sizes: list[int]) -> list[int | None]:
    """``max_reference_samples`` shared between groups by their size, every group keeping at least one row so
    every shape stays proven (None: no budget, every row of every group)."""
    total = sum(sizes)
    return [None if budget is None else max(1, round(budget * size / total)) for size in sizes]


def cover_groups(
    spec: Any, groups: list[dict[str, np.ndarray]], research: list[dict[str, np.ndarray]], candidates: int
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], Coverage]:
    """Covering rows of each group (no preprocessing, so no probes), the budget shared by group size:
    every group keeps at least one row, so every shape stays proven."""
    if len(groups) == 1:
        inputs, _, kept, covered = cover(spec, groups[0], None, research[0], candidates, None)
        return [inputs], [kept], covered
    shares = group_budgets(spec.max_reference_samples, [length(g) for g in groups])
    kept_groups, kept_research, described = [], [], []
    for inputs, outputs, share in zip(groups, research, shares, strict=True):
        scores = coverage.score_like(outputs, spec.score_outputs)
        keep = coverage.select_rows(inputs, outputs, scores, share)
        inputs, outputs = take(inputs, keep), take(outputs, keep)
        kept_groups.append(inputs)
        kept_research.append(outputs)
        described.append(
            coverage.describe(
                inputs,
                outputs,
                scores,
                candidates=length(inputs),
                selected=len(keep),
                probes=coverage.Probes(),
                columns=[],
                selection="all",
            )
        )
    selected = sum(length(g) for g in kept_groups)
    return kept_groups, kept_research, coverage.merge(described, candidates=candidates, selected=selected)


def cover_staged(
    spec: Any,
    staged: list[StagedPreprocessing],
    research: list[dict[str, np.ndarray]],
    candidates: int,
    run_model: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]],
) -> tuple[list[StagedPreprocessing], list[dict[str, np.ndarray]], Coverage]:
    """:func:`cover` for each group of staged preprocessing, the budget shared by group size (every group keeps
    at least one row, so every shape stays proven)."""
    if len(staged) == 1:
        _, kept, outputs, covered = cover(spec, staged[0].raw, staged[0], research[0], candidates, run_model)
        return [kept], [outputs], covered  # type: ignore[list-item]
    import dataclasses

    shares = group_budgets(spec.max_reference_samples, [length(s.raw) for s in staged])
    kept_groups, kept_research, described = [], [], []
    for group, outputs, share in zip(staged, research, shares, strict=True):
        _, kept, outputs, covered = cover(
            dataclasses.replace(spec, max_reference_samples=share),
            group.raw,
            group,
            outputs,
            length(group.raw),
            run_model,
        )
        kept_groups.append(kept)
        kept_research.append(outputs)
        described.append(covered)
    selected = sum(c.selected for c in described)
    return kept_groups, kept_research, coverage.merge(described, candidates=candidates, selected=selected)  # type: ignore[return-value]
