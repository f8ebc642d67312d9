"""The serving-side parity check: verify -> construct -> run references -> verdict.

Order matters: nothing in a bundle is used before its manifest validated and every
file matched its hash. The pipeline's ONNX Runtime session is created while the files
hash, and handed over only once they matched; a signed bundle's files are all verified
before ONNX Runtime opens any of them (see :func:`~paritybundle.store.open_bundle_loading`).
"""

from __future__ import annotations

import os
import time
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from .strict import StrictModel
from . import environment
from .environment import DEFAULT_POLICY, DriftReport
from .errors import BundleInvalid, InputValidationError, UsageError
from .manifest import Manifest, TensorSpec, Tolerance, TolerancePolicy
from .external_data import check_external_data
from .parity import OutputAccumulator, OutputComparison
from .references import ArrayStream
from .runtime import DEFAULT_BATCH_SIZE, Runner, SessionSettings, create_session, onnxruntime_version
from .stages import StageResult, column_accumulators, diagnose, spanning_columns
from .store import VerifiedBundle, open_bundle, open_bundle_loading

REPORT_SCHEMA_VERSION = 1


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
    # Where the reference set came from: the bundle, a live endpoint, or an ONNX test data directory.
    source: Literal["bundle", "url", "testdata"] = "bundle"
    url: str | None = None
    testdata: str | None = None
    model: str | None = None


class CheckReport(StrictModel):
    """The result of a parity check; truthy when parity holds.

    Its JSON form (``--json``) is versioned by ``schema_version`` and documented
    in the README.
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

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed_outputs(self) -> list[str]:
        return [o.name for o in self.outputs if not o.passed]


@dataclass
class ServingRuntime:
    """A verified bundle with its pipeline loaded in ONNX Runtime.

    Example:
        >>> rt = paritybundle.load("artifacts/digits")  # doctest: +SKIP
        >>> rt.predict(x)["logits"].shape  # doctest: +SKIP
        (5, 10)
    """

    bundle: VerifiedBundle
    settings: SessionSettings
    runner: Runner
    drift: DriftReport

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def predict(self, inputs: Mapping[str, Any] | np.ndarray, *, batch_size: int | None = DEFAULT_BATCH_SIZE) -> dict[str, np.ndarray]:
        """Run raw inputs through the pipeline; returns output name -> array.

        Raises:
            InputValidationError: inputs that do not match the bundle's input specs.
        """
        return self.runner.run(self.runner.validate(inputs), batch_size)


def load(path: str | os.PathLike[str], settings: SessionSettings | None = None,
         env_policy: str = DEFAULT_POLICY, public_key: str | os.PathLike[str] | None = None) -> ServingRuntime:
    """Verify a bundle, apply the drift policy, and load its pipeline into ONNX Runtime.

    Args:
        path: the bundle directory.
        settings: session settings; defaults to the ones the export was validated with.
        env_policy: ``strict`` (refuse critical drift), ``warn`` or ``ignore``.
        public_key: require ``bundle.sig`` to verify with this key.

    Returns:
        A :class:`ServingRuntime` with ``.predict(inputs)``.

    Raises:
        UsageError: the path does not exist.
        BundleInvalid: the bundle fails integrity or cannot be loaded.
        EnvironmentRefused: critical drift under the strict policy.
    """
    return open_runtime(path, lambda manifest: settings or settings_from_manifest(manifest), env_policy, public_key)


def open_runtime(path: str | os.PathLike[str], choose_settings: Callable[[Manifest], SessionSettings],
                 env_policy: str, public_key: str | os.PathLike[str] | None) -> ServingRuntime:
    """:func:`load`, with the session settings chosen from the manifest (the server's own choice).

    The pipeline's session is created while the bundle's files hash (see
    :func:`~paritybundle.store.open_bundle_loading`); the drift policy is applied once
    they matched (the lock is one of them), before anything is run.
    """

    def open_pipeline(bundle: VerifiedBundle) -> tuple[SessionSettings, Runner, environment.EnvironmentLock]:
        settings = choose_settings(bundle.manifest)
        # Reading this environment needs nothing from the bundle: it too runs while the files hash.
        return settings, _pipeline_runner(bundle, settings), environment.capture(with_closure=False)

    environment.check_policy(env_policy)  # a typo costs no hashing and no session
    bundle, (settings, runner, here) = open_bundle_loading(path, public_key, open_pipeline)
    drift = environment_drift(bundle, env_policy, list(settings.providers), here)
    return ServingRuntime(bundle=bundle, settings=settings, drift=drift, runner=runner)


def load_verified(bundle: VerifiedBundle, settings: SessionSettings | None = None,
                  env_policy: str = DEFAULT_POLICY) -> ServingRuntime:
    """:func:`load` for a bundle already opened with :func:`~paritybundle.store.open_bundle`:
    its files are not hashed a second time."""
    settings = settings or settings_from_manifest(bundle.manifest)
    drift = environment_drift(bundle, env_policy, list(settings.providers))
    return ServingRuntime(bundle=bundle, settings=settings, drift=drift, runner=_pipeline_runner(bundle, settings))


def read_lock(bundle: VerifiedBundle) -> environment.EnvironmentLock:
    """The bundle's environment lock (verified bytes, strictly parsed)."""
    relative = bundle.manifest.environment_lock
    return environment.parse_lock(bundle.path(relative).read_bytes(), source=relative)


def environment_drift(bundle: VerifiedBundle, policy: str, providers: list[str],
                      here: environment.EnvironmentLock | None = None) -> DriftReport:
    """Compare this environment (``here``, captured now if not given) with the bundle's lock and
    judge it under ``policy``."""
    here = environment.capture(with_closure=False) if here is None else here
    return environment.apply_policy(environment.diff_environments(read_lock(bundle), here, providers), policy)


def settings_from_manifest(manifest: Manifest) -> SessionSettings:
    return SessionSettings(
        providers=tuple(manifest.runtime.providers),
        graph_optimization_level=manifest.runtime.graph_optimization_level,
        intra_op_num_threads=manifest.runtime.intra_op_num_threads,
    )


def _pipeline_runner(bundle: VerifiedBundle, settings: SessionSettings) -> Runner:
    """The bundle's pipeline in an ONNX Runtime session, its inputs and outputs as the manifest declares."""
    manifest = bundle.manifest
    # Before ONNX Runtime opens the model: its external data must be the bundle's own files.
    check_external_data(manifest.stages.pipeline, bundle.root, set(manifest.files))
    session = create_session(bundle.path(manifest.stages.pipeline), settings, label=manifest.stages.pipeline)
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    declared_in, declared_out = [s.name for s in manifest.inputs], [s.name for s in manifest.outputs]
    if sorted(graph_inputs) != sorted(declared_in) or not set(declared_out) <= set(graph_outputs):
        raise BundleInvalid(
            f"{manifest.stages.pipeline} has inputs {graph_inputs} and outputs {graph_outputs}, but the manifest "
            f"declares {declared_in} -> {declared_out}; re-export the bundle."
        )
    return Runner(session, list(manifest.inputs), list(manifest.outputs))


def check(
    path: str | os.PathLike[str],
    *,
    settings: SessionSettings | None = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: Mapping[str, Tolerance] | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
    progress: bool = False,
    histograms: bool = False,
) -> CheckReport:
    """Verify a bundle, run its reference inputs through ONNX Runtime, and judge parity.

    Args:
        path: the bundle directory.
        settings: ONNX Runtime settings; defaults to those recorded at export.
        tolerance: replaces the bundle's default tolerance (recorded in the report).
        per_output_tolerance: replaces the tolerance of named outputs (recorded).
        batch_size: reference samples per ONNX Runtime call, and per streamed batch (None: all at once).
        progress: show a progress bar on stderr.
        env_policy: drift policy: ``strict`` refuses critical drift before inference.
        public_key: require ``bundle.sig`` to verify with this key before anything is used.

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
    if batch_size is not None and batch_size < 1:
        raise UsageError("batch size must be a positive number of samples.")
    runtime = load(path, settings, env_policy, public_key)
    return check_runtime(runtime, tolerance=tolerance, per_output_tolerance=per_output_tolerance,
                         batch_size=batch_size, started=started, progress=progress, stages=True, histograms=histograms)


def check_runtime(
    runtime: ServingRuntime,
    *,
    tolerance: Tolerance | None = None,
    per_output_tolerance: Mapping[str, Tolerance] | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    started: float | None = None,
    progress: bool = False,
    histograms: bool = False,
    stages: bool = True,
) -> CheckReport:
    """Run a loaded runtime's reference set and judge parity (the server checks the session it serves).

    The reference set is streamed in batches of ``batch_size`` samples, so memory stays
    flat however large it is; ``progress`` shows a progress bar on stderr. With
    ``stages`` and a bundle with preprocessing, ``preprocess.onnx`` and ``model.onnx``
    are also checked on their own, which localizes a failure (see :mod:`.stages`).
    """
    started = time.perf_counter() if started is None else started
    manifest = runtime.manifest
    overrides = _overrides(manifest, tolerance, per_output_tolerance)
    serve = _reference_runner(
        runtime.runner, batch_size,
        lambda exc: f"{manifest.reference.inputs} does not match the manifest's input specs: {exc}")
    staged: list[StageResult] = []
    if stages and manifest.preprocessing is not None:
        comparisons, staged, samples = staged_comparison(runtime, serve, batch_size, overrides, tolerance, progress,
                                                         histograms)
    else:
        comparisons, samples = stream_comparison(runtime.bundle, serve, batch_size, overrides, progress, histograms)
    return _report(runtime.bundle, comparisons, overrides, _local_settings(runtime, batch_size, samples),
                   runtime.drift, started, staged)


def _local_settings(runtime: ServingRuntime, batch_size: int | None, samples: int, **source: Any) -> CheckSettings:
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


def _reference_runner(runner: Runner, batch_size: int | None, mismatch: Callable[[InputValidationError], str],
                      ) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """Run hash-verified reference rows through ``runner``: inputs that do not fit its specs are the
    bundle's fault (exit 3, ``mismatch`` says how); NaN/inf are not rescanned (see ``Runner.validate``)."""

    def run(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            validated = runner.validate(batch, check_finite=False)
        except InputValidationError as exc:
            raise BundleInvalid(mismatch(exc)) from None
        return runner.run(validated, batch_size)
    return run


def _baselines(manifest: Manifest) -> dict[str, float]:
    """Per output, the torch-vs-ORT error export measured: a serving error far above it is a notice."""
    return {name: error.max_abs for name, error in manifest.export_errors.items()}


# Reference sets up to this size are read and compared in one pass (fewer, larger numpy
# operations); larger ones stream in batches so memory stays flat.
STREAM_ABOVE_BYTES = 256 * 1024 * 1024


def _rows_per_pass(manifest: Manifest, files: Sequence[str], batch_size: int | None, rows: int) -> int:
    """All rows at once while the reference arrays are small, else ``batch_size`` rows per pass."""
    size = sum(manifest.files[f].bytes for f in files)
    return max(rows, 1) if (batch_size is None or size <= STREAM_ABOVE_BYTES) else batch_size


def staged_comparison(
    runtime: ServingRuntime,
    serve: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    batch_size: int | None,
    overrides: Mapping[str, Tolerance],
    tolerance: Tolerance | None = None,
    progress: bool = False,
    histograms: bool = False,
) -> tuple[list[OutputComparison], list[StageResult], int]:
    """One pass over the reference set of a bundle with preprocessing, checking four things per batch:

    * ``pipeline``: the merged graph (what serving runs) on the raw inputs vs the research outputs;
    * ``preprocess``: ``preprocess.onnx`` on the raw inputs vs the reference features, per raw input;
    * ``model``: ``model.onnx`` on the reference features vs the research outputs;
    * ``merge``: the merged graph vs ``model.onnx`` run on ``preprocess.onnx``'s outputs, i.e. the
      proof that the merged graph computes what the two stages compute in sequence.

    Returns the pipeline comparisons, the four stages, and the number of samples.
    """
    bundle, settings = runtime.bundle, runtime.settings
    manifest = bundle.manifest
    pre_info, files = manifest.preprocessing, manifest.stages
    assert pre_info is not None and files.preprocess is not None and manifest.reference.features is not None
    features = list(pre_info.features)
    feature_tolerance = tolerance or manifest.tolerance.default
    pre_run = _stage_runner(bundle, files.preprocess, list(manifest.inputs), features, settings, batch_size)
    model_run = _stage_runner(bundle, files.model, features, list(manifest.outputs), settings, batch_size)

    inputs = ArrayStream(bundle.path(manifest.reference.inputs), [s.name for s in manifest.inputs],
                         label=manifest.reference.inputs)
    reference_features = ArrayStream(bundle.path(manifest.reference.features), [s.name for s in features],
                                     label=manifest.reference.features)
    research = ArrayStream(bundle.path(manifest.reference.outputs), [s.name for s in manifest.outputs],
                           label=manifest.reference.outputs)
    if not inputs.rows == reference_features.rows == research.rows:
        raise BundleInvalid(f"the reference set has {inputs.rows} inputs, {reference_features.rows} feature rows and "
                            f"{research.rows} outputs; re-export the bundle.")
    rows = inputs.rows
    baselines = _baselines(manifest)

    def judged(spec: TensorSpec, stream: ArrayStream) -> OutputAccumulator:
        return output_accumulator(spec, manifest.tolerance, rows * stream.elements_per_row(spec.name), overrides, baselines,
                                  histograms)

    pipeline = {s.name: judged(s, research) for s in manifest.outputs}
    model = {s.name: judged(s, research) for s in manifest.outputs}
    merge = {s.name: OutputAccumulator(s.name, manifest.tolerance.default, rows * research.elements_per_row(s.name))
             for s in manifest.outputs}
    columns = column_accumulators(pre_info, feature_tolerance, rows)
    # A raw input that alone makes a whole feature array (a Pipeline's image, say) already compares
    # all of it: that feature's result is derived from its column instead of computed twice.
    spanning = spanning_columns(columns)
    pre = {s.name: OutputAccumulator(s.name, feature_tolerance, rows * reference_features.elements_per_row(s.name))
           for s in features if s.name not in spanning}

    step = _rows_per_pass(manifest, (manifest.reference.inputs, manifest.reference.features, manifest.reference.outputs),
                          batch_size, rows)
    with _progress(progress, rows) as advance:
        for (first, raw), (_, wanted_features), (_, wanted) in zip(
                inputs.batches(step), reference_features.batches(step), research.batches(step)):
            served = serve(raw)
            served_features = pre_run(raw)
            in_sequence = model_run(dict(served_features))
            on_reference_features = model_run(wanted_features)
            for name in pipeline:
                pipeline[name].add(served[name], wanted[name], first)
                model[name].add(on_reference_features[name], wanted[name], first)
                merge[name].add(served[name], in_sequence[name], first)
            for name in pre:
                pre[name].add(served_features[name], wanted_features[name], first)
            for column in columns:
                column.add(served_features[column.feature], wanted_features[column.feature], first)
            advance(len(next(iter(raw.values()))))

    pipeline_results = [a.finish() for a in pipeline.values()]
    column_results = [c.finish() for c in columns]
    by_feature = {r.feature: r.comparison for c, r in zip(columns, column_results) if spanning.get(c.feature) is c}
    pre_results = [pre[s.name].finish() if s.name in pre else by_feature[s.name].model_copy(update={"name": s.name})
                   for s in features]
    model_results = [a.finish() for a in model.values()]
    merge_results = [a.finish() for a in merge.values()]
    stages = [
        StageResult(stage="preprocess", file=files.preprocess, outputs=pre_results, columns=column_results,
                    passed=all(pre_results) and all(c.comparison.passed for c in column_results)),
        StageResult(stage="model", file=files.model, passed=all(model_results), outputs=model_results),
        StageResult(stage="pipeline", file=files.pipeline, passed=all(pipeline_results), outputs=pipeline_results),
        StageResult(stage="merge", file=files.pipeline,
                    passed=all(merge_results), outputs=merge_results),
    ]
    return pipeline_results, stages, rows


def _stage_runner(bundle: VerifiedBundle, file: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                  settings: SessionSettings, batch_size: int | None) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """Run one stage's graph of a verified bundle (its external data confined to the bundle first)."""
    check_external_data(file, bundle.root, set(bundle.manifest.files))
    runner = Runner(create_session(bundle.path(file), settings, label=file), inputs, outputs)
    return _reference_runner(
        runner, batch_size,
        lambda exc: f"the reference set does not match {file}'s inputs: {str(exc).rstrip('.')}; re-export the bundle.")


def stream_comparison(
    bundle: VerifiedBundle,
    serve: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    batch_size: int | None,
    overrides: Mapping[str, Tolerance],
    progress: bool = False,
    histograms: bool = False,
) -> tuple[list[OutputComparison], int]:
    """Feed the reference set through ``serve`` and compare each output as it comes.

    ``serve`` gets a dict of input rows and must itself split them into calls of
    ``batch_size`` (it receives at most that many rows when the set streams).
    """
    manifest = bundle.manifest
    inputs = ArrayStream(bundle.path(manifest.reference.inputs), [s.name for s in manifest.inputs],
                         label=manifest.reference.inputs)
    research = ArrayStream(bundle.path(manifest.reference.outputs), [s.name for s in manifest.outputs],
                           label=manifest.reference.outputs)
    if inputs.rows != research.rows:
        raise BundleInvalid(f"the reference set has {inputs.rows} inputs but {research.rows} outputs; re-export the bundle.")
    baselines = _baselines(manifest)
    accumulators = {
        spec.name: output_accumulator(spec, manifest.tolerance, research.rows * research.elements_per_row(spec.name),
                                      overrides, baselines, histograms)
        for spec in manifest.outputs
    }
    rows = _rows_per_pass(manifest, (manifest.reference.inputs, manifest.reference.outputs), batch_size, inputs.rows)
    with _progress(progress, inputs.rows) as advance:
        for (first, batch), (_, expected) in zip(inputs.batches(rows), research.batches(rows)):
            served = serve(batch)
            for name, accumulator in accumulators.items():
                accumulator.add(served[name], expected[name], first)
            advance(len(next(iter(batch.values()))))
    return [accumulator.finish() for accumulator in accumulators.values()], inputs.rows


@contextlib.contextmanager
def _progress(enabled: bool, total: int):
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from rich.console import Console

    with Progress("checking references", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("references", total=total)
        yield lambda n: bar.advance(task, n)


def _report(bundle: VerifiedBundle, comparisons: list[OutputComparison], overrides: dict[str, Tolerance],
            settings: CheckSettings, drift: DriftReport | None, started: float,
            stages: list[StageResult] | None = None) -> CheckReport:
    manifest = bundle.manifest
    notices = [
        f"output {c.name!r}: serving error {c.stats.max_abs:.3g} is over {manifest.tolerance.baseline_factor:g}x "
        f"the export-time error {c.baseline_max_abs:.3g}; within tolerance, but this environment differs "
        "numerically from the one that validated the bundle."
        for c in comparisons if c.passed and c.above_baseline and c.stats is not None and c.baseline_max_abs is not None
    ]
    stages = stages or []
    return CheckReport(
        passed=all(comparisons) and all(stage.passed for stage in stages),
        checked_at=datetime.now(timezone.utc),
        duration_s=time.perf_counter() - started,
        bundle=BundleIdentity(path=str(bundle.source or bundle.root), name=manifest.name, version=manifest.version,
                              files_verified=len(manifest.files)),
        settings=settings,
        reference={"device": manifest.reference.device, "precision": manifest.reference.precision},
        tolerance_overrides=overrides,
        environment=drift,
        outputs=comparisons,
        notices=notices,
        stages=stages,
        diagnosis=diagnose(stages),
    )


def check_url(
    path: str | os.PathLike[str],
    url: str,
    *,
    model: str | None = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: Mapping[str, Tolerance] | None = None,
    request_batch: int = 64,
    timeout_s: float = 30.0,
    public_key: str | os.PathLike[str] | None = None,
    progress: bool = False,
    histograms: bool = False,
) -> CheckReport:
    """Send a bundle's reference inputs to a live V2 endpoint and judge its answers.

    Works against any Open Inference Protocol (V2) REST server, so a deployment
    pipeline can prove the deployed service, not just the file, matches research.

    Args:
        path: the bundle directory (verified first).
        url: the server's base URL, e.g. ``http://127.0.0.1:8080``.
        model: the model name on the server (default: the bundle's name).
        tolerance / per_output_tolerance: as in :func:`check`.
        request_batch: reference samples per request.
        timeout_s: per-request timeout.

    Raises:
        BundleInvalid: the local bundle fails integrity.
        EndpointError: unreachable, timed out, not a V2 server, or a model that does not match.
    """
    from .serving.client import V2Client

    started = time.perf_counter()
    if request_batch < 1:
        raise UsageError("the request batch must be at least 1 sample.")
    bundle = open_bundle(path, public_key)
    manifest = bundle.manifest
    overrides = _overrides(manifest, tolerance, per_output_tolerance)
    client = V2Client(url, timeout_s=timeout_s)
    name = model or manifest.name
    client.check_model(name, manifest)
    comparisons, samples = stream_comparison(bundle, lambda batch: client.infer_all(name, manifest, batch, request_batch),
                                             request_batch, overrides, progress, histograms)
    settings = CheckSettings(onnxruntime_version=None, providers=[], graph_optimization_level=None,
                             intra_op_num_threads=None, batch_size=request_batch, samples=samples,
                             source="url", url=url, model=name)
    return _report(bundle, comparisons, overrides, settings, None, started)


def check_testdata(
    path: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    settings: SessionSettings | None = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: Mapping[str, Tolerance] | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
    histograms: bool = False,
) -> CheckReport:
    """Check a bundle's pipeline against ONNX test data (``test_data_set_K/input_I.pb``, ``output_O.pb``)
    instead of its own reference set: the bundle's tolerance, this directory's inputs and outputs.

    Such a directory comes from ``bundle testdata`` (of this or another bundle) or from any tool
    writing ONNX's test data layout. Each set is read whole (test data sets are small by design).

    Raises:
        UsageError: ``folder`` is not a test data directory.
        BundleInvalid: the bundle fails integrity, or a set does not match its graph.
    """
    from .testdata import read_testdata

    started = time.perf_counter()
    runtime = load(path, settings, env_policy, public_key)
    manifest = runtime.manifest
    overrides = _overrides(manifest, tolerance, per_output_tolerance)
    runner = runtime.runner
    order = [i.name for i in runner.session.get_inputs()]
    sets = list(read_testdata(folder, list(manifest.inputs), list(manifest.outputs), order))
    baselines = _baselines(manifest)
    accumulators = {spec.name: output_accumulator(spec, manifest.tolerance, sum(int(np.asarray(e[spec.name]).size)
                                                                               for _, _, e in sets), overrides, baselines,
                                                    histograms)
                    for spec in manifest.outputs}
    first = 0
    for name, given, expected in sets:
        try:
            validated = runner.validate(given)
        except InputValidationError as exc:
            raise BundleInvalid(f"{name} does not match the bundle's inputs: {exc}") from None
        served = runner.run(validated, batch_size)
        for output, accumulator in accumulators.items():
            if served[output].shape != expected[output].shape:
                raise BundleInvalid(f"{name}: output {output!r} has shape {list(expected[output].shape)} in the test data "
                                    f"but the pipeline gives {list(served[output].shape)}.")
            accumulator.add(served[output], expected[output], first)
        first += len(next(iter(validated.values())))
    comparisons = [a.finish() for a in accumulators.values()]
    return _report(runtime.bundle, comparisons, overrides,
                   _local_settings(runtime, batch_size, first, source="testdata", testdata=str(folder)),
                   runtime.drift, started)


def _overrides(manifest: Manifest, tolerance: Tolerance | None,
               per_output: Mapping[str, Tolerance] | None) -> dict[str, Tolerance]:
    names = [o.name for o in manifest.outputs]
    overrides = {name: tolerance for name in names} if tolerance is not None else {}
    for name, tol in (per_output or {}).items():
        if name not in names:
            raise UsageError(f"tolerance override names output {name!r}, but the bundle's outputs are {', '.join(names)}.")
        overrides[name] = tol
    return overrides


def output_accumulator(spec: TensorSpec, policy: TolerancePolicy, total_elements: int,
                       overrides: Mapping[str, Tolerance] | None = None,
                       baselines: Mapping[str, float] | None = None, histogram: bool = False) -> OutputAccumulator:
    """How one output is judged under ``policy``: the one place that reads the policy for it."""
    return OutputAccumulator(
        spec.name, (overrides or {}).get(spec.name, policy.for_output(spec.name)), total_elements,
        scores=spec.kind == "scores",
        min_decision_agreement=policy.min_decision_agreement,
        baseline_max_abs=(baselines or {}).get(spec.name),
        baseline_factor=policy.baseline_factor,
        tie_tolerance=policy.default,
        histogram=histogram,
    )


def compare_with_policy(
    outputs: Sequence[TensorSpec],
    policy: TolerancePolicy,
    served: Mapping[str, np.ndarray],
    research: Mapping[str, np.ndarray],
    baselines: Mapping[str, float] | None = None,
    overrides: Mapping[str, Tolerance] | None = None,
) -> list[OutputComparison]:
    """Compare whole in-memory outputs under ``policy`` (export's validation)."""
    results = []
    for spec in outputs:
        expected = np.asarray(research[spec.name])
        accumulator = output_accumulator(spec, policy, expected.size, overrides, baselines)
        accumulator.add(served[spec.name], expected)
        results.append(accumulator.finish())
    return results


def verify(path: str | os.PathLike[str], public_key: str | os.PathLike[str] | None = None) -> VerifiedBundle:
    """Integrity only: manifest, signature (with ``public_key``) and every file's hash; no inference.

    Raises:
        UsageError: the path does not exist.
        BundleInvalid: naming the offending file, or a missing/wrong/stale signature.
    """
    return open_bundle(path, public_key)


