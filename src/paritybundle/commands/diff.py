"""``bundle diff A B``: two bundles side by side, and what the change did to outputs.

Static: input/output specs (and whether B can replace A behind the same endpoint),
preprocessing steps and fitted statistics, graph summaries, tolerance policy,
environment locks, provenance. Behaviour: B's pipeline on A's reference inputs
against A's research outputs, and A's pipeline on B's, both judged by A's
tolerance, with the predictions that flip. A change in results is then tied to a
change in the bundle.
"""

from __future__ import annotations

import os
from typing import Literal

from ..bundle.manifest import Manifest, TolerancePolicy
from ..bundle.store import VerifiedBundle, open_bundle
from ..check import engine
from ..check.engine import Comparison, Part, Run
from ..check.sources import BundleReferences
from ..check.targets import RunnerTarget
from ..errors import InputValidationError
from ..parity.judge import judge_for
from ..runtime.drift import diff_environments
from ..runtime.load import ServingRuntime, load_verified, read_lock
from .diff_models import BehaviourRun, BundleSide, Compatibility, DiffReport, PreprocessingDiff
from .diff_static import (
    compatibility_of,
    graph_diff,
    preprocessing_diff,
    provenance_changes,
    spec_differences,
    strength_changes,
    tolerance_changes,
)


def diff(
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    *,
    expect_change: bool = False,
    public_key: str | os.PathLike[str] | None = None,
    batch_size: int = 1024,
) -> DiffReport:
    """Compare bundle B with bundle A (both verified first).

    Args:
        expect_change: B is meant to change outputs: report, and pass unless specs are incompatible.
        public_key: require both signatures to verify with this key.

    Raises:
        UsageError / BundleInvalid: as for ``verify``, for either bundle.

    Example:
        >>> report = paritybundle.commands.diff.diff("artifacts/wine-v6", "artifacts/wine-v7")  # doctest: +SKIP
        >>> report.reproduces, report.compatibility.compatible  # doctest: +SKIP
    """
    bundle_a, bundle_b = open_bundle(path_a, public_key), open_bundle(path_b, public_key)
    a, b = bundle_a.manifest, bundle_b.manifest
    specs = spec_differences(a, b)
    compatibility = compatibility_of(specs, a, b)
    behaviour: list[BehaviourRun] = []
    if compatibility.compatible:
        runtime_a, runtime_b = (
            load_verified(bundle_a, env_policy="ignore"),
            load_verified(bundle_b, env_policy="ignore"),
        )
        behaviour = [
            run_on_references(
                runtime_b,
                bundle_a,
                a.tolerance,
                "b_on_a",
                batch_size,
                f"B ({b.name} v{b.version}) on A's reference inputs vs A's research outputs",
            ),
            run_on_references(
                runtime_a,
                bundle_b,
                a.tolerance,
                "a_on_b",
                batch_size,
                f"A ({a.name} v{a.version}) on B's reference inputs vs B's research outputs",
            ),
        ]
    preprocessing = preprocessing_diff(a.preprocessing, b.preprocessing)
    unexercised = unexercised_changes(preprocessing, a, b)
    reproduces = compatibility.compatible and all(run.passed for run in behaviour) and not unexercised
    passed = compatibility.compatible and (reproduces or expect_change)
    return DiffReport(
        a=_side(bundle_a),
        b=_side(bundle_b),
        compatibility=compatibility,
        specs=specs,
        preprocessing=preprocessing,
        unexercised=unexercised,
        graphs=[
            g for g in (graph_diff(bundle_a, bundle_b, stage) for stage in ("pipeline", "model", "preprocess")) if g
        ],
        tolerance=tolerance_changes(a.tolerance, b.tolerance),
        strength=strength_changes(a, b),
        environment=diff_environments(read_lock(bundle_a), read_lock(bundle_b), list(b.runtime.providers)),
        provenance=provenance_changes(a, b),
        behaviour=behaviour,
        reproduces=reproduces,
        expect_change=expect_change,
        passed=passed,
        verdict=_verdict(compatibility, behaviour, reproduces, expect_change, unexercised),
    )


def unexercised_changes(preprocessing: PreprocessingDiff | None, a: Manifest, b: Manifest) -> list[str]:
    """A sentence per changed fitted value of a step that replaces missing values (an imputer's fill) whose
    input holds no missing value in either reference set: B run on A's references, and A on B's, never
    took that path, so their agreement says nothing about it (a median become 0 passed both)."""
    if preprocessing is None or a.preprocessing is None:
        return []
    steps = {(c.input, k): step for c in a.preprocessing.columns for k, step in enumerate(c.steps)}
    changed: dict[tuple[str, int], list[str]] = {}
    for change in preprocessing.statistics:
        step = steps.get((change.input, change.step))
        if step is None or step.nan != "replaced":
            continue
        if any(m.coverage is not None and m.coverage.nan_rows.get(change.input, 0) for m in (a, b)):
            continue
        changed.setdefault((change.input, change.step), []).append(change.summary)
    return [
        f"the fitted {steps[key].kind} of {key[0]!r} changed ({'; '.join(summaries)}), but neither reference set "
        f"holds a missing {key[0]!r}, so no run took that path; re-export A (export now adds a missing-value "
        "probe for every imputed column) and diff again."
        for key, summaries in changed.items()
    ]


def _side(bundle: VerifiedBundle) -> BundleSide:
    m = bundle.manifest
    return BundleSide(path=str(bundle.source or bundle.root), name=m.name, version=m.version, created_at=m.created_at)


def _verdict(
    compatibility: Compatibility,
    behaviour: list[BehaviourRun],
    reproduces: bool,
    expect_change: bool,
    unexercised: list[str],
) -> str:
    if not compatibility.compatible:
        return "B cannot replace A behind the same endpoint: " + "; ".join(compatibility.problems) + "."
    if reproduces:
        return "B reproduces A within A's tolerance on both reference sets; it can replace A."
    failing = [r for r in behaviour if not r.passed]
    if not failing:
        lead = "B changes outputs, as expected (--expect-change)" if expect_change else "B is not shown to reproduce A"
        return f"{lead}: " + " ".join(unexercised)
    what = "; ".join(
        f"{r.description}: "
        + (r.problem or ", ".join(c.name for c in r.outputs if not c.passed) + " differ")
        + _flips(r)
        for r in failing
    )
    lead = "B changes outputs, as expected (--expect-change)" if expect_change else "B does not reproduce A"
    return f"{lead}: {what}."


def _flips(run: BehaviourRun) -> str:
    """Changed decisions per output, out of that run's samples: the two runs are over different reference sets
    (their sum once read "1642 predictions flip" on 1,002 samples)."""
    flips = [
        f"{c.name}: {c.decision.samples - c.decision.agreeing} of {c.decision.samples} decisions change"
        for c in run.outputs
        if c.decision is not None and c.decision.agreeing < c.decision.samples
    ]
    return f" ({'; '.join(flips)})" if flips else ""


# --- behaviour ---------------------------------------------------------------------------------


class _Incomparable(Exception):
    """One side's outputs cannot be compared with the other's research outputs (the run's ``problem``)."""


def run_on_references(
    runtime: ServingRuntime,
    references: VerifiedBundle,
    policy: TolerancePolicy,
    direction: Literal["b_on_a", "a_on_b"],
    batch_size: int,
    description: str,
) -> BehaviourRun:
    """``runtime``'s pipeline on ``references``' inputs, judged against its research outputs under ``policy``."""
    manifest = references.manifest
    source = BundleReferences(references)
    served_names = {s.name for s in runtime.manifest.outputs}
    judges = {
        s.name: judge_for(s, policy, source.total_elements("outputs", s.name))
        for s in manifest.outputs
        if s.name in served_names
    }

    def refuse(exc: InputValidationError) -> _Incomparable:
        return _Incomparable(f"the pipeline refuses these inputs: {exc}")

    def mismatch(name, served, expected, batch) -> None:
        raise _Incomparable(
            f"output {name!r} has shape {list(served.shape[1:])} per sample here but "
            f"{list(expected.shape[1:])} in the research outputs"
        )

    serve = RunnerTarget(runtime.runner, batch_size, refuse=refuse)
    try:
        engine.run(
            source,
            [Comparison(Run(serve, Part("inputs")), Part("outputs"), list(judges.items()), on_shape_mismatch=mismatch)],
            rows_per_pass=batch_size,
        )
    except _Incomparable as exc:
        return BehaviourRun(
            direction=direction,
            description=description,
            samples=source.rows,
            passed=False,
            outputs=[],
            problem=str(exc),
        )
    outputs = [j.finish() for j in judges.values()]
    return BehaviourRun(
        direction=direction,
        description=description,
        samples=source.rows,
        passed=bool(outputs) and all(outputs),
        outputs=outputs,
        problem=None if outputs else "no output in common",
    )
