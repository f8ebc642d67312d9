"""The parity gate every scoring worker passes before it scores a row.

Once per worker process, on the worker's own node: verify the bundle's hashes, apply the drift
policy to *this* environment, and run the bundle's reference check (its probe rows included) on
this runtime. Only a worker whose check passed gets a runtime to score with; one that fails raises
the check's own error class (exit 1 parity, 3 integrity, 4 environment) with a message naming the
worker, its node and host, and a :class:`WorkerRecord` saying the same for the job's report.

The bundle reaches a worker as a :class:`Shipment`: the driver's verified bundle packed as the
archive ``bundle pack`` writes, with the digest of the ``bundle.json`` the driver verified. The
worker unpacks it as any untrusted archive, verifies every hash itself, and refuses a bundle whose
manifest is not the one the driver verified, so no shared file system is assumed and nothing a
worker scores with went unverified on that worker.
"""

from __future__ import annotations

import io
import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..bundle.archive import write_archive
from ..bundle.private import private_directory
from ..bundle.store import VerifiedBundle
from ..bundle.strict import StrictModel
from ..check.checks import check_runtime
from ..check.results import CheckReport
from ..errors import BundleInvalid, ParityBundleError, ParityFailure, error_for_exit_code
from ..runtime.drift import DEFAULT_POLICY
from ..runtime.load import ServingRuntime, Settings, load
from ..runtime.lock import cpu_info
from ..runtime.session import onnxruntime_version

Engine = Literal["local", "ray", "spark"]


class WorkerRecord(StrictModel):
    """One worker of a scoring job: where it ran, what its gate found, what it scored."""

    worker: str
    engine: Engine
    node: str
    host: str
    pid: int
    cpu_model: str | None
    cpu_features: list[str]
    onnxruntime_version: str | None
    python: str
    verdict: Literal["passed", "failed"]
    exit_code: int
    message: str | None
    # Drift from the bundle's lock this worker found (critical and notable differences; info left out).
    drift: list[str]
    reference_samples: int
    gate_seconds: float
    rows_scored: int = 0


@dataclass(frozen=True)
class Where:
    """A worker's identity as its engine names it."""

    engine: Engine
    worker: str
    node: str


@dataclass(frozen=True)
class Shipment:
    """A verified bundle as bytes for workers on other machines (see the module's docstring)."""

    archive: bytes
    manifest_sha256: str
    name: str


@dataclass
class Gate:
    """A worker that passed: the runtime it scores with, and its record."""

    runtime: ServingRuntime
    record: WorkerRecord
    report: CheckReport


def ship(bundle: VerifiedBundle) -> Shipment:
    """Pack a bundle the driver verified for its workers."""
    buffer = io.BytesIO()
    write_archive(bundle, buffer)
    return Shipment(archive=buffer.getvalue(), manifest_sha256=bundle.manifest_sha256(), name=bundle.manifest.name)


_received: dict[str, Path] = {}


def received(shipment: Shipment) -> Path:
    """Where this process keeps a shipment's archive (written once per process, in a private directory)."""
    path = _received.get(shipment.manifest_sha256)
    if path is None or not path.is_file():
        path = private_directory("paritybundle-shipment-") / "bundle.tar.gz"
        path.write_bytes(shipment.archive)
        _received[shipment.manifest_sha256] = path
    return path


def open_gate(
    bundle: str | os.PathLike[str] | Shipment,
    where: Where,
    *,
    settings: Settings = None,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
) -> Gate:
    """Verify, apply the drift policy and check parity here; the gate, or the check's error naming this worker.

    Raises:
        BundleInvalid (3), EnvironmentRefused (4), ParityFailure (1), UsageError (2): as the check would,
            the message prefixed with the worker, node and host. ``error.record`` holds the :class:`WorkerRecord`.
    """
    started = time.perf_counter()
    try:
        path = received(bundle) if isinstance(bundle, Shipment) else bundle
        runtime = load(path, settings, env_policy, public_key)
        if isinstance(bundle, Shipment) and runtime.bundle.manifest_sha256() != bundle.manifest_sha256:
            raise BundleInvalid(
                f"the bundle this worker received is not the one the driver verified "
                f"(bundle.json sha256 {runtime.bundle.manifest_sha256()[:12]}, expected "
                f"{bundle.manifest_sha256[:12]})."
            )
        report = check_runtime(runtime)
        if not report.passed:
            raise ParityFailure(
                f"the bundle's reference check fails on this worker's runtime: {failure_summary(report)}"
            )
    except ParityBundleError as exc:
        record = _record(where, started, verdict="failed", code=exc.exit_code, message=str(exc))
        raise refusal(record, exc) from None
    drift = [
        f"{item.severity}: {item.what} {item.locked} -> {item.running}"
        for item in runtime.drift.items
        if item.severity != "info"
    ]
    record = _record(
        where, started, verdict="passed", code=0, message=None, drift=drift, samples=report.settings.samples
    )
    return Gate(runtime=runtime, record=record, report=report)


_gates: dict[tuple[str, str, str | None, str], Gate | ParityBundleError] = {}


def cached_gate(
    shipment: Shipment,
    where: Where,
    *,
    settings: Settings = None,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | None = None,
) -> tuple[Gate, bool]:
    """This process's gate for ``shipment`` under ``env_policy``: opened on first use, then kept, as is a
    refusal, raised again (engines reuse worker processes; the check runs once per process).
    Returns the gate and whether this call opened it."""
    key = (shipment.manifest_sha256, env_policy, public_key, repr(settings))
    known = _gates.get(key)
    opened = known is None
    if known is None:
        try:
            known = open_gate(shipment, where, settings=settings, env_policy=env_policy, public_key=public_key)
        except ParityBundleError as exc:
            known = exc
        _gates[key] = known
    if isinstance(known, ParityBundleError):
        raise known
    return known, opened


def refusal(record: WorkerRecord, exc: ParityBundleError) -> ParityBundleError:
    """The error a failed gate raises: the check's class, the worker named, its record attached."""
    cls = error_for_exit_code(exc.exit_code) or type(exc)
    error = cls(f"worker {record.worker} on node {record.node} (host {record.host}) refused to score: {exc}")
    error.record = record.model_copy(update={"message": str(error)})  # type: ignore[attr-defined]
    return error


def failure_summary(report: CheckReport) -> str:
    """Which outputs failed and by how much, in one line."""
    parts = []
    for output in report.outputs:
        if output.passed:
            continue
        if output.problem is not None:
            parts.append(f"{output.name}: {output.problem}")
        elif output.stats is not None and output.stats.violations:
            parts.append(
                f"{output.name}: max abs error {output.stats.max_abs:.3g}, {output.stats.violations} "
                "elements beyond tolerance"
            )
        elif output.decision is not None:
            parts.append(
                f"{output.name}: decisions agree on {output.decision.agreement:.1%} of "
                f"{output.decision.unit} (at least {output.decision.min_agreement:.1%} required)"
            )
    return "; ".join(parts) or (report.diagnosis or "a stage of the pipeline failed")


def _record(
    where: Where,
    started: float,
    *,
    verdict: Literal["passed", "failed"],
    code: int,
    message: str | None,
    drift: list[str] | None = None,
    samples: int = 0,
) -> WorkerRecord:
    cpu = cpu_info()
    return WorkerRecord(
        worker=where.worker,
        engine=where.engine,
        node=where.node,
        host=socket.gethostname(),
        pid=os.getpid(),
        cpu_model=cpu.model,
        cpu_features=list(cpu.numeric_flags),
        onnxruntime_version=onnxruntime_version(),
        python=platform.python_version(),
        verdict=verdict,
        exit_code=code,
        message=message,
        drift=drift or [],
        reference_samples=samples,
        gate_seconds=round(time.perf_counter() - started, 4),
    )
