"""Checks on captured production traffic (``bundle serve --capture``), through the one comparison loop.

* :func:`check_capture` (``bundle check BUNDLE --references CAPTURE``): this machine's pipeline on
  the inputs production received, against what production answered. A failure here is a
  *runtime* difference (another ONNX Runtime, other kernels, another build), not a research one.
* :func:`compare_replay`: research's outputs for the same inputs (computed by ``bundle replay``
  on the training side, with torch) against what production answered, under the bundle's policy.

Both name the requests a failing output failed on (``CheckReport.failing_requests``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import numpy as np

from ..bundle.manifest import Tolerance
from ..bundle.store import VerifiedBundle
from ..errors import UsageError
from ..parity.judge import tolerance_overrides
from ..parity.results import MAX_LISTED_SAMPLES, OutputComparison
from ..runtime.capture import CaptureData, merged, read_capture
from ..runtime.drift import DEFAULT_POLICY, DriftReport
from ..runtime.load import Settings, load
from ..runtime.runner import DEFAULT_BATCH_SIZE
from . import engine
from .checks import TolerancesByOutput, local_settings, output_judges, runtime_on_source
from .engine import Comparison, Part
from .results import CheckReport, CheckSettings, make_report
from .sources import InMemoryReferences


def check_capture(
    path: str | os.PathLike[str],
    capture: str | os.PathLike[str],
    *,
    settings: Settings = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: TolerancesByOutput = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
    histograms: bool = False,
) -> CheckReport:
    """This runtime's pipeline on captured traffic's inputs, against the outputs production served.

    Raises:
        UsageError: no capture at ``capture``, pyarrow missing, or a capture of other tensors.
        BundleInvalid, EnvironmentRefused: as :func:`paritybundle.check`.
    """
    started = time.perf_counter()
    runtime = load(path, settings, env_policy, public_key)
    data = _read(capture, runtime.bundle)
    overrides = tolerance_overrides(runtime.manifest, tolerance, per_output_tolerance)
    source = InMemoryReferences(merged(data.groups))
    comparisons, samples = runtime_on_source(
        runtime,
        source,
        overrides,
        batch_size=batch_size,
        rows_per_pass=batch_size or max(source.rows, 1),
        histograms=histograms,
    )
    settings_used = local_settings(runtime, batch_size, samples, source="capture", capture=str(capture))
    return traffic_report(runtime.bundle, data, comparisons, overrides, settings_used, runtime.drift, started)


def compare_replay(
    bundle: VerifiedBundle,
    data: CaptureData,
    research: Sequence[Mapping[str, np.ndarray]],
    *,
    tolerance: Tolerance | None = None,
    per_output_tolerance: TolerancesByOutput = None,
    capture: str = "",
    histograms: bool = False,
    started: float | None = None,
) -> CheckReport:
    """What production served (``data``'s outputs) against ``research``'s outputs for the same inputs,
    one mapping per group of ``data``; judged under the bundle's policy as a check is."""
    started = time.perf_counter() if started is None else started
    manifest = bundle.manifest
    overrides = tolerance_overrides(manifest, tolerance, per_output_tolerance)
    source = InMemoryReferences(
        [{"served": g.outputs, "outputs": dict(r)} for g, r in zip(data.groups, research, strict=True)]
    )
    judges = output_judges(manifest, source, overrides, histograms)
    engine.run(
        source, [Comparison(Part("served"), Part("outputs"), list(judges.items()))], rows_per_pass=max(source.rows, 1)
    )
    settings = CheckSettings(
        onnxruntime_version=None,
        providers=[],
        graph_optimization_level=None,
        intra_op_num_threads=None,
        batch_size=None,
        samples=data.samples,
        source="replay",
        capture=capture,
    )
    return traffic_report(bundle, data, [j.finish() for j in judges.values()], overrides, settings, None, started)


def traffic_report(
    bundle: VerifiedBundle,
    data: CaptureData | Mapping[int, str],
    comparisons: list[OutputComparison],
    overrides: dict[str, Tolerance],
    settings: CheckSettings,
    drift: DriftReport | None,
    started: float,
) -> CheckReport:
    """The check's report, with the requests each failing output failed on (``data``: the capture, or
    the request of each sample the comparisons name, as merged shards give it)."""
    report = make_report(bundle, comparisons, overrides, settings, drift, started)
    if isinstance(data, CaptureData):
        order = data.order
        request_of = {s: data.request_of(int(order[s])) for c in comparisons for s in _named(c) if s < order.size}
    else:
        request_of = dict(data)
    failing: dict[str, list[str]] = {}
    for comparison in comparisons:
        if comparison.passed:
            continue
        failing[comparison.name] = [request_of[s] for s in _named(comparison) if s in request_of]
    return report.model_copy(update={"failing_requests": failing})


def _named(comparison: OutputComparison) -> list[int]:
    """The samples a failing comparison names, in order, at most MAX_LISTED_SAMPLES."""
    if comparison.passed:
        return []
    samples = list(comparison.failing_samples)
    if comparison.decision is not None:
        samples += comparison.decision.disagreeing_samples
    if comparison.stats is not None and comparison.stats.worst_sample is not None and not samples:
        samples.append(comparison.stats.worst_sample)
    return sorted(set(samples), key=samples.index)[:MAX_LISTED_SAMPLES]


def _read(capture: str | os.PathLike[str], bundle: VerifiedBundle) -> CaptureData:
    data = read_capture(capture, bundle.manifest)
    if not data.samples:
        raise UsageError(f"{capture} holds no captured samples; let the server answer some requests first.")
    return data
