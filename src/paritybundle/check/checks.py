"""The parity checks: verify -> construct -> run references through the one loop -> verdict.

Each public function picks a source and a target and hands them to :func:`.engine.run`:

==========================  ===================================  ==========================
function                    source                               target
==========================  ===================================  ==========================
:func:`check`               the bundle's reference set           the local pipeline (and its
                                                                 stages, with preprocessing)
:func:`check_runtime`       the same, for a runtime already      the session it serves
                            loaded (the server's start-up)
:func:`check_endpoint`      the bundle's reference set           a live V2 endpoint (client
                                                                 passed in)
:func:`check_testdata`      an ONNX test data directory          the local pipeline
:func:`compare_in_memory`   arrays in memory (export)            a runner of a staged graph
==========================  ===================================  ==========================
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import Manifest, TensorSpec, Tolerance, TolerancePolicy
from ..bundle.store import open_bundle
from ..errors import BundleInvalid, InputValidationError, UsageError
from ..parity.judge import export_baselines, judge_for, tolerance_overrides
from ..parity.results import OutputComparison
from ..runtime.drift import DEFAULT_POLICY
from ..runtime.load import ServingRuntime, Settings, load
from ..runtime.runner import DEFAULT_BATCH_SIZE, Runner
from ..runtime.session import onnxruntime_version
from . import engine
from .engine import Batch, Comparison, Part, Run
from .progress import progress_bar
from .results import CheckReport, CheckSettings, make_report
from .rows_alone import RowsAlone
from .sources import BundleReferences, InMemoryReferences, TestdataReferences
from .staged import StagedCheck
from .targets import EndpointTarget, InferenceClient, RunnerTarget

TolerancesByOutput = Mapping[str, Tolerance] | None


def check(
    path: str | os.PathLike[str],
    *,
    settings: Settings = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: TolerancesByOutput = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
    progress: bool = False,
    histograms: bool = False,
) -> CheckReport:
    """Verify a bundle, run its reference inputs through ONNX Runtime, and judge parity.

    Args:
        path: the bundle directory (or archive).
        settings: ONNX Runtime settings in full, or ``SessionOverrides`` of those recorded at export (default).
        tolerance: replaces the bundle's default tolerance (recorded in the report).
        per_output_tolerance: replaces the tolerance of named outputs (recorded).
        batch_size: reference samples per ONNX Runtime call, and per streamed batch (None: all at once).
        env_policy: drift policy: ``strict`` refuses critical drift before inference.
        public_key: require ``bundle.sig`` to verify with this key before anything is used.
        progress: show a progress bar on stderr.
        histograms: record error histograms per output (for ``--html``).

    Returns:
        A :class:`CheckReport`, truthy when parity holds.

    Raises:
        UsageError: bad path or arguments.
        BundleInvalid: integrity failure, unreadable model or reference arrays.
        EnvironmentRefused: critical drift under the strict policy.

    Example:
        >>> report = paritybundle.check("artifacts/digits")  # doctest: +SKIP
        >>> bool(report)  # doctest: +SKIP
        True
    """
    started = time.perf_counter()
    _check_batch_size(batch_size)
    runtime = load(path, settings, env_policy, public_key)
    return check_runtime(
        runtime,
        tolerance=tolerance,
        per_output_tolerance=per_output_tolerance,
        batch_size=batch_size,
        started=started,
        progress=progress,
        histograms=histograms,
    )


def check_runtime(
    runtime: ServingRuntime,
    *,
    tolerance: Tolerance | None = None,
    per_output_tolerance: TolerancesByOutput = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    started: float | None = None,
    progress: bool = False,
    histograms: bool = False,
    stages: bool = True,
) -> CheckReport:
    """Run a loaded runtime's reference set and judge parity (the server checks the session it serves).

    The reference set is streamed in batches of ``batch_size`` samples when large, so memory
    stays flat; with ``stages`` and a bundle with preprocessing, ``preprocess.onnx`` and
    ``model.onnx`` are also checked on their own, which localizes a failure (:mod:`.staged`).
    """
    started = time.perf_counter() if started is None else started
    manifest = runtime.manifest
    overrides = tolerance_overrides(manifest, tolerance, per_output_tolerance)
    serve = RunnerTarget(
        runtime.runner,
        batch_size,
        refuse=lambda exc: BundleInvalid(
            f"{manifest.reference.inputs} does not match the manifest's input specs: {exc}"
        ),
    )
    staged = stages and manifest.preprocessing is not None
    source = BundleReferences(runtime.bundle, ("inputs", "features", "outputs") if staged else ("inputs", "outputs"))
    alone = RowsAlone(source.rows, [s.name for s in manifest.inputs], [s.name for s in manifest.outputs])
    if staged:
        stage_check = StagedCheck(runtime, serve, source, batch_size, overrides, tolerance, histograms)
        samples = _run(
            source, [*stage_check.comparisons, *alone.comparisons], source.rows_per_pass(batch_size), progress
        )
        comparisons, stage_results = stage_check.finish()
    else:
        judges = output_judges(manifest, source, overrides, histograms)
        samples = _run(
            source,
            [Comparison(Run(serve, Part("inputs")), Part("outputs"), list(judges.items())), *alone.comparisons],
            source.rows_per_pass(batch_size),
            progress,
        )
        comparisons, stage_results = [j.finish() for j in judges.values()], []
    one_by_one = alone.finish(serve, lambda rows: output_judges(manifest, rows, overrides), manifest.stages.pipeline)
    stage_results = [*stage_results, *([one_by_one] if one_by_one is not None else [])]
    return make_report(
        runtime.bundle,
        comparisons,
        overrides,
        local_settings(runtime, batch_size, samples),
        runtime.drift,
        started,
        stage_results,
    )


def check_endpoint(
    path: str | os.PathLike[str],
    client: InferenceClient,
    *,
    url: str,
    model: str | None = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: TolerancesByOutput = None,
    request_batch: int = 64,
    public_key: str | os.PathLike[str] | None = None,
    progress: bool = False,
    histograms: bool = False,
) -> CheckReport:
    """Send a bundle's reference inputs to a live endpoint through ``client`` and judge its answers.

    ``bundle check --url`` passes a :class:`~paritybundle.serving.client.V2Client`
    (:func:`paritybundle.commands.endpoint.check_url`); ``url`` is recorded in the report.

    Raises:
        BundleInvalid: the local bundle fails integrity.
        EndpointError: unreachable, timed out, not a V2 server, or a model that does not match.
    """
    started = time.perf_counter()
    if request_batch < 1:
        raise UsageError("the request batch must be at least 1 sample.")
    bundle = open_bundle(path, public_key)
    manifest = bundle.manifest
    overrides = tolerance_overrides(manifest, tolerance, per_output_tolerance)
    name = model or manifest.name
    endpoint = EndpointTarget(client, name, manifest, request_batch)
    endpoint.check_model()
    source = BundleReferences(bundle)
    judges = output_judges(manifest, source, overrides, histograms)
    alone = RowsAlone(source.rows, [s.name for s in manifest.inputs], [s.name for s in manifest.outputs])
    samples = _run(
        source,
        [Comparison(Run(endpoint, Part("inputs")), Part("outputs"), list(judges.items())), *alone.comparisons],
        request_batch,
        progress,
    )
    one_by_one = alone.finish(
        EndpointTarget(client, name, manifest, 1),
        lambda rows: output_judges(manifest, rows, overrides),
        f"{url} ({name})",
    )
    settings = CheckSettings(
        onnxruntime_version=None,
        providers=[],
        graph_optimization_level=None,
        intra_op_num_threads=None,
        batch_size=request_batch,
        samples=samples,
        source="url",
        url=url,
        model=name,
    )
    return make_report(
        bundle,
        [j.finish() for j in judges.values()],
        overrides,
        settings,
        None,
        started,
        [one_by_one] if one_by_one is not None else [],
    )


def check_testdata(
    path: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    settings: Settings = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: TolerancesByOutput = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
    histograms: bool = False,
) -> CheckReport:
    """Check a bundle's pipeline against ONNX test data (``test_data_set_K/input_I.pb``, ``output_O.pb``)
    instead of its own reference set: the bundle's tolerance, this directory's inputs and outputs.

    Such a directory comes from ``bundle testdata`` (of this or another bundle) or from any tool
    writing ONNX's test data layout.

    Raises:
        UsageError: ``folder`` is not a test data directory.
        BundleInvalid: the bundle fails integrity, or a set does not match its graph.
    """
    started = time.perf_counter()
    runtime = load(path, settings, env_policy, public_key)
    manifest = runtime.manifest
    overrides = tolerance_overrides(manifest, tolerance, per_output_tolerance)
    order = [i.name for i in runtime.runner.session.get_inputs()]
    source = TestdataReferences(Path(folder), manifest.inputs, manifest.outputs, order)

    def mismatch(name: str, served: np.ndarray, expected: np.ndarray, batch: Batch) -> None:
        raise BundleInvalid(
            f"{batch.label}: output {name!r} has shape {list(expected.shape)} in the test data "
            f"but the pipeline gives {list(served.shape)}."
        )

    # The source validated each set against the specs.
    comparisons, samples = runtime_on_source(
        runtime,
        source,
        overrides,
        batch_size=batch_size,
        rows_per_pass=max(source.rows, 1),
        histograms=histograms,
        on_shape_mismatch=mismatch,
    )
    return make_report(
        runtime.bundle,
        comparisons,
        overrides,
        local_settings(runtime, batch_size, samples, source="testdata", testdata=str(folder)),
        runtime.drift,
        started,
    )


def runtime_on_source(
    runtime: ServingRuntime,
    source: Any,
    overrides: Mapping[str, Tolerance],
    *,
    batch_size: int | None,
    rows_per_pass: int,
    histograms: bool = False,
    on_shape_mismatch: Callable[..., None] | None = None,
) -> tuple[list[OutputComparison], int]:
    """``runtime``'s pipeline on a source's ``inputs``, judged against the source's ``outputs`` under the
    bundle's policy (ONNX test data, captured traffic): the comparisons and the samples run."""
    judges = output_judges(runtime.manifest, source, overrides, histograms)
    comparison = Comparison(
        Run(RunnerTarget(runtime.runner, batch_size), Part("inputs")),
        Part("outputs"),
        list(judges.items()),
        on_shape_mismatch=on_shape_mismatch,
    )
    samples = engine.run(source, [comparison], rows_per_pass=rows_per_pass)
    return [j.finish() for j in judges.values()], samples


def compare_in_memory(
    runner: Runner,
    policy: TolerancePolicy,
    inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    research: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    *,
    refuse: Callable[[InputValidationError], Any] | None = None,
) -> list[OutputComparison]:
    """``runner`` on in-memory ``inputs`` against ``research``, judged under ``policy`` (export's
    fail-closed validation, before anything is written). Both may be lists of groups, pairwise."""
    if isinstance(inputs, Mapping) and isinstance(research, Mapping):
        source = InMemoryReferences({"inputs": inputs, "outputs": research})
    elif not isinstance(inputs, Mapping) and not isinstance(research, Mapping):
        source = InMemoryReferences([{"inputs": i, "outputs": r} for i, r in zip(inputs, research, strict=True)])
    else:
        raise TypeError("inputs and research must both be one group (a mapping) or both lists of groups")
    judges = {
        spec.name: judge_for(spec, policy, source.total_elements("outputs", spec.name)) for spec in runner.outputs
    }
    engine.run(
        source,
        [
            Comparison(
                Run(RunnerTarget(runner, None, refuse=refuse), Part("inputs")), Part("outputs"), list(judges.items())
            )
        ],
        rows_per_pass=max(source.rows, 1),
    )
    return [j.finish() for j in judges.values()]


def output_judges(
    manifest: Manifest,
    source: Any,
    overrides: Mapping[str, Tolerance],
    histograms: bool = False,
    outputs: Sequence[TensorSpec] | None = None,
) -> dict[str, Any]:
    """One judge per declared output (or per spec of ``outputs``) under the bundle's policy."""
    baselines = export_baselines(manifest)
    return {
        spec.name: judge_for(
            spec,
            manifest.tolerance,
            source.total_elements("outputs", spec.name),
            overrides=overrides,
            baselines=baselines,
            histogram=histograms,
        )
        for spec in (manifest.outputs if outputs is None else outputs)
    }


def local_settings(runtime: ServingRuntime, batch_size: int | None, samples: int, **source: Any) -> CheckSettings:
    """What a check with this process's ONNX Runtime ran under (``source``: where references came from)."""
    return CheckSettings(
        onnxruntime_version=onnxruntime_version(),
        providers=list(runtime.settings.providers),
        graph_optimization_level=runtime.settings.graph_optimization_level,
        intra_op_num_threads=runtime.settings.intra_op_num_threads,
        batch_size=batch_size,
        samples=samples,
        **source,
    )


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise UsageError("batch size must be a positive number of samples.")


def _run(source: Any, comparisons: Sequence[Comparison], rows_per_pass: int, progress: bool) -> int:
    with progress_bar("checking references", progress, source.rows) as advance:
        return engine.run(source, comparisons, rows_per_pass=rows_per_pass, advance=advance)
