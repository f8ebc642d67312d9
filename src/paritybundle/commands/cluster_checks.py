"""``bundle check --references CAPTURE --engine ray`` and ``bundle replay ... --engine ray``: a capture's
files judged as shards on Ray workers, their judges merged on the driver (:mod:`paritybundle.check.sharded`).

A check's worker first passes the same gate a scoring worker does (the bundle verified on the worker,
the drift policy applied to its environment, the bundle's reference check on its runtime), then
compares its runtime with what production served on each shard it is given. A replay's worker
rebuilds the research model from the export spec (torch, on the worker) and judges what production
served against it. The report is the one a local run writes, with the workers that judged listed in
``settings.workers``; its statistics are identical to a local run's (p99 included, see
:meth:`~paritybundle.parity.accumulator.OutputAccumulator.merge`).
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..bundle.manifest import Manifest, Tolerance
from ..bundle.store import open_bundle
from ..check.checks import TolerancesByOutput, local_settings
from ..check.results import CheckReport, CheckSettings
from ..check.sharded import Shard, ShardResult, judge_capture, merge_shards, plan_shards
from ..check.traffic import traffic_report
from ..errors import UsageError
from ..parity.judge import tolerance_overrides
from ..runtime.capture import read_capture
from ..runtime.drift import DEFAULT_POLICY, check_policy
from ..runtime.load import Settings
from ..runtime.runner import DEFAULT_BATCH_SIZE
from ..scoring.gate import Shipment, Where, cached_gate, ship
from ..scoring.worker_errors import error_from_text, expected_cause


def check_capture_on_ray(
    bundle: str | os.PathLike[str],
    capture: str | os.PathLike[str],
    *,
    settings: Settings = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: TolerancesByOutput = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
    histograms: bool = False,
    address: str | None = None,
    workers: int = 2,
) -> CheckReport:
    """:func:`paritybundle.check.traffic.check_capture` with the capture's files judged on Ray workers.

    Raises:
        UsageError: no capture, Ray missing or unreachable. BundleInvalid (3), EnvironmentRefused (4),
            ParityFailure (1): a worker's gate refused (the error names it).
    """
    started = time.perf_counter()
    check_policy(env_policy)
    verified = open_bundle(bundle, public_key)
    overrides = tolerance_overrides(verified.manifest, tolerance, per_output_tolerance)
    shards = _shards(capture, verified.manifest)
    shipment = ship(verified)
    key = None if public_key is None else str(public_key)
    results = _on_ray(
        _judge_check_shard,
        shards,
        address,
        workers,
        dict(
            shipment=shipment,
            settings=settings,
            env_policy=env_policy,
            public_key=key,
            overrides=overrides,
            batch_size=batch_size,
            histograms=histograms,
            capture=str(capture),
        ),
    )
    comparisons, requests, samples = merge_shards(results)
    # What the first shard's worker ran under (every worker merged its own session settings the same way).
    worker_settings = results[0].settings
    assert worker_settings is not None, "every worker's report carries its settings"
    used = worker_settings.model_copy(update={"samples": samples, "workers": _workers(results)})
    return traffic_report(verified, requests, comparisons, overrides, used, None, started)


def replay_on_ray(
    spec: str,
    capture: str | os.PathLike[str],
    *,
    bundle: str | os.PathLike[str] | None = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: TolerancesByOutput = None,
    public_key: str | os.PathLike[str] | None = None,
    histograms: bool = False,
    address: str | None = None,
    workers: int = 2,
) -> CheckReport:
    """:func:`paritybundle.training.replay.replay` with the research path run on Ray workers, shard by shard.

    ``spec`` is the export spec as ``file.py:name`` or ``module:name``: each worker loads it (the file or
    module must be importable there, as for the training job itself).
    """
    from ..training.replay import judging_bundle

    started = time.perf_counter()
    if not isinstance(spec, str):
        raise UsageError(
            "a replay on Ray takes the export spec as file.py:name or module:name, which each worker loads."
        )
    verified, notices = judging_bundle(capture, bundle, public_key)
    overrides = tolerance_overrides(verified.manifest, tolerance, per_output_tolerance)
    shards = _shards(capture, verified.manifest)
    results = _on_ray(
        _judge_replay_shard,
        shards,
        address,
        workers,
        dict(spec=absolute_spec(spec), manifest=verified.manifest, overrides=overrides, histograms=histograms),
    )
    comparisons, requests, samples = merge_shards(results)
    used = CheckSettings(
        onnxruntime_version=None,
        providers=[],
        graph_optimization_level=None,
        intra_op_num_threads=None,
        batch_size=None,
        samples=samples,
        source="replay",
        capture=str(capture),
        engine="ray",
        workers=_workers(results),
    )
    report = traffic_report(verified, requests, comparisons, overrides, used, None, started)
    update: dict[str, Any] = {"notices": notices + report.notices}
    if bundle is None:
        update["bundle"] = report.bundle.model_copy(update={"files_verified": 0})
    return report.model_copy(update=update)


def absolute_spec(spec: str) -> str:
    """``file.py:name`` with the file's absolute path (workers need not share the driver's directory);
    ``module:name`` as it is."""
    path, sep, name = spec.rpartition(":")
    if sep and path.endswith(".py") and Path(path).is_file():
        return f"{Path(path).resolve()}:{name}"
    return spec


def _shards(capture: str | os.PathLike[str], manifest: Manifest) -> list[Shard]:
    shards = plan_shards(Path(capture), manifest)
    if not sum(s.samples for s in shards):
        raise UsageError(f"{capture} holds no captured samples; let the server answer some requests first.")
    return [s for s in shards if s.samples]


def _on_ray(
    function: Any, shards: list[Shard], address: str | None, workers: int, arguments: dict[str, Any]
) -> list[ShardResult]:
    """One Ray task per shard, at most ``workers`` at once; the results in capture order, or the error a
    worker raised (its class and message kept)."""
    from ..scoring.ray_engine import actor_cpus, connect, ray_module

    ray = ray_module()
    started = connect(address, workers)
    try:
        remote = ray.remote(num_cpus=actor_cpus(workers), max_retries=0)(function)
        shared = ray.put(arguments)
        pending: list[Any] = []
        index_of: dict[Any, int] = {}
        results: dict[int, ShardResult] = {}
        for index, shard in enumerate(shards):
            if len(pending) >= workers:  # bounded: at most `workers` shards in flight (and in memory) at once
                done, pending = ray.wait(pending, num_returns=1)
                results.update(_collect(ray, done, index_of))
            ref = remote.remote(shard, shared)
            index_of[ref] = index
            pending.append(ref)
        results.update(_collect(ray, pending, index_of))
        return [results[i] for i in range(len(shards))]
    finally:
        if started:
            ray.shutdown()


def _collect(ray: Any, refs: list[Any], index_of: dict[Any, int]) -> dict[int, ShardResult]:
    collected = {}
    for ref in refs:
        try:
            collected[index_of[ref]] = ray.get(ref)
        except Exception as exc:  # Ray's wrapping of what the worker raised
            found = expected_cause(exc) or error_from_text(str(exc))
            if found is None:
                raise
            raise found from None
    return collected


def _worker_identity() -> dict[str, str]:
    import ray

    context = ray.get_runtime_context()
    return {
        "worker": f"ray-{context.get_worker_id()[:12]}",
        "node": context.get_node_id()[:12],
        "host": socket.gethostname(),
    }


def _workers(results: list[ShardResult]) -> list[str]:
    counts = Counter(
        f"{r.worker.get('worker')} on {r.worker.get('host')} (node {r.worker.get('node')}"
        + (f", onnxruntime {r.worker['onnxruntime']}" if r.worker.get("onnxruntime") else "")
        + ")"
        for r in results
    )
    return [f"{name}: {n} shard{'s' * (n != 1)}" for name, n in counts.items()]


def _judge_check_shard(shard: Shard, arguments: dict[str, Any]) -> ShardResult:
    """On a worker: pass the gate (once per process), then judge this runtime on one shard."""
    identity = _worker_identity()
    shipment: Shipment = arguments["shipment"]
    gate, _ = cached_gate(
        shipment,
        Where(engine="ray", worker=identity["worker"], node=identity["node"]),
        settings=arguments["settings"],
        env_policy=arguments["env_policy"],
        public_key=arguments["public_key"],
    )
    runtime = gate.runtime
    data = read_capture(shard.file, runtime.manifest)
    result = judge_capture(
        data,
        shard,
        runtime.manifest,
        arguments["overrides"],
        runner=runtime.runner,
        batch_size=arguments["batch_size"],
        histograms=arguments["histograms"],
    )
    result.worker = {**identity, "onnxruntime": gate.record.onnxruntime_version or ""}
    result.settings = local_settings(
        runtime, arguments["batch_size"], result.samples, source="capture", capture=arguments["capture"], engine="ray"
    )
    return result


_specs: dict[str, Any] = {}


def _judge_replay_shard(shard: Shard, arguments: dict[str, Any]) -> ShardResult:
    """On a worker: research (the spec's torch model, loaded once per process) on one shard's inputs,
    against what production served."""
    from ..training.replay import research_outputs
    from ..training.spec import load_spec

    spec_text: str = arguments["spec"]
    if spec_text not in _specs:
        _specs[spec_text] = load_spec(spec_text)
    manifest: Manifest = arguments["manifest"]
    data = read_capture(shard.file, manifest)
    research = research_outputs(_specs[spec_text], data, manifest)
    result = judge_capture(
        data, shard, manifest, arguments["overrides"], research=research, histograms=arguments["histograms"]
    )
    result.worker = _worker_identity()
    return result
