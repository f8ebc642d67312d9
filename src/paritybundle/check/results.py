"""What a check returns: :class:`CheckReport` and the models in it (the ``--json`` schema, version 1)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Final, Literal

from ..bundle.manifest import Coverage, Manifest, Power, Tolerance
from ..bundle.store import VerifiedBundle
from ..bundle.strict import StrictModel
from ..parity.localise import StageResult, diagnose
from ..parity.results import OutputComparison
from ..parity.tolerance import tolerance_exceeds_outputs
from ..runtime.drift import DriftReport

REPORT_SCHEMA_VERSION: Final = 1


class BundleIdentity(StrictModel):
    path: str
    name: str
    version: str
    files_verified: int


class CheckSettings(StrictModel):
    """Everything about the run that can move a verdict, recorded in the report."""

    onnxruntime_version: str | None
    providers: list[str]
    graph_optimization_level: str | None
    intra_op_num_threads: int | None
    batch_size: int | None
    samples: int
    # Where the reference set came from: the bundle, a live endpoint, an ONNX test data directory,
    # or captured traffic (checked by this runtime, or replayed through the research model).
    source: Literal["bundle", "url", "testdata", "capture", "replay"] = "bundle"
    url: str | None = None
    testdata: str | None = None
    capture: str | None = None
    model: str | None = None
    # A check sharded over a cluster (``--engine ray``): the engine, and each worker that judged shards
    # ("worker on host, onnxruntime VERSION: N shards").
    engine: Literal["local", "ray"] = "local"
    workers: list[str] = []


class CheckReport(StrictModel):
    """The result of a parity check; truthy when parity holds.

    Its JSON form (``--json``) is versioned by ``schema_version`` and documented
    in docs/jobs/check.md.
    """

    schema_version: Literal[1] = REPORT_SCHEMA_VERSION
    passed: bool
    checked_at: datetime
    duration_s: float
    bundle: BundleIdentity
    settings: CheckSettings
    reference: dict[str, str]
    tolerance_overrides: dict[str, Tolerance]
    # None when the answers came from a live endpoint (its environment is not visible here).
    environment: DriftReport | None
    outputs: list[OutputComparison]
    notices: list[str]
    # Bundles with preprocessing: each stage checked on its own (preprocess per raw input,
    # model on the reference features, the merged pipeline), and where a failure arose.
    stages: list[StageResult] = []
    diagnosis: str | None = None
    # How strong the verdict is (recorded at export; None for bundles from before it was).
    power: Power | None = None
    coverage: Coverage | None = None
    # Checks of captured traffic: per failing output, the requests (id, and [row] past the first) it
    # failed on, at most MAX_LISTED_SAMPLES.
    failing_requests: dict[str, list[str]] = {}

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed_outputs(self) -> list[str]:
        return [o.name for o in self.outputs if not o.passed]


def make_report(
    bundle: VerifiedBundle,
    comparisons: list[OutputComparison],
    overrides: dict[str, Tolerance],
    settings: CheckSettings,
    drift: DriftReport | None,
    started: float,
    stages: Sequence[StageResult] = (),
) -> CheckReport:
    """The report of a finished comparison: verdict, notices, and where a failure arose."""
    manifest = bundle.manifest
    notices = [
        f"output {c.name!r}: serving error {c.stats.max_abs:.3g} is over {manifest.tolerance.baseline_factor:g}x "
        f"the export-time error {c.baseline_max_abs:.3g}; within tolerance, but this environment differs "
        "numerically from the one that validated the bundle."
        for c in comparisons
        if c.passed and c.above_baseline and c.stats is not None and c.baseline_max_abs is not None
    ]
    notices += [
        f"output {name!r}: the tolerance is larger than the outputs (its atol reaches the spread of the "
        "research values): this check cannot tell models apart on it."
        for name in tolerance_exceeds_outputs(manifest.tolerance, overrides)
    ]
    if manifest.reference.groups and settings.source in ("bundle", "url"):
        comparisons = [_with_group(c, manifest) for c in comparisons]
    return CheckReport(
        passed=all(comparisons) and all(stage.passed for stage in stages),
        checked_at=datetime.now(timezone.utc),
        duration_s=time.perf_counter() - started,
        bundle=BundleIdentity(
            path=str(bundle.source or bundle.root),
            name=manifest.name,
            version=manifest.version,
            files_verified=len(manifest.files),
        ),
        settings=settings,
        reference={"device": manifest.reference.device, "precision": manifest.reference.precision},
        tolerance_overrides=overrides,
        environment=drift,
        outputs=comparisons,
        notices=notices,
        stages=list(stages),
        diagnosis=diagnose(
            stages,
            all(comparisons),
            manifest.tolerance.approximation.serving_precision
            if manifest.tolerance.approximation is not None
            else None,
        ),
        power=manifest.power,
        coverage=manifest.coverage,
    )


def _with_group(comparison: OutputComparison, manifest: Manifest) -> OutputComparison:
    """The group of shapes (and the sample within it) holding the worst element."""
    if comparison.stats is None or comparison.stats.worst_sample is None:
        return comparison
    group, sample = manifest.reference.locate(comparison.stats.worst_sample)
    return comparison.model_copy(update={"worst_group": group, "worst_group_sample": sample})
