"""Drift: the running environment against the bundle's lock, classified and judged by a policy.

The running environment is captured as at export (:mod:`.lock`) and compared with the
lock; each difference is classified:

* **critical**: can change serving numerics or behaviour outright: the onnxruntime
  version, numpy's major version, Python's minor version or implementation, the CPU
  architecture, an execution provider the bundle was validated with that is missing.
* **notable**: other serving dependencies, the OS or libc, CPU features that change
  numerics (AVX2, AVX-512, FMA, ...).
* **info**: training-only packages (torch is absent on the serving side by design),
  Python patch releases, kernel release, thread variables.

The drift policy decides what happens: ``strict`` (default) refuses critical drift
with exit 4 before any inference, ``warn`` reports it, ``ignore`` only records it.
"""

from __future__ import annotations

from typing import Any, Literal

from ..bundle.strict import StrictModel
from ..errors import EnvironmentRefused, UsageError
from .lock import SELF, TOOLING, EnvironmentLock

POLICIES = ("strict", "warn", "ignore")
Policy = Literal["strict", "warn", "ignore"]
Severity = Literal["critical", "notable", "info"]
DEFAULT_POLICY: Policy = "strict"


class DriftItem(StrictModel):
    what: str
    locked: str | None
    running: str | None
    severity: Severity
    reason: str


class DriftReport(StrictModel):
    """The running environment against the bundle's lock, under a policy."""

    policy: Policy
    items: list[DriftItem]
    refused: bool

    def count(self, severity: Severity) -> int:
        return sum(1 for item in self.items if item.severity == severity)


def _major(version: str | None) -> str | None:
    return version.split(".")[0] if version else None


def _minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def diff_environments(
    lock: EnvironmentLock, running: EnvironmentLock, validated_providers: list[str] | None = None
) -> list[DriftItem]:
    """Every difference between ``lock`` and ``running``, classified, most severe first."""
    items: list[DriftItem] = []

    def add(what: str, locked: Any, now: Any, severity: Severity, reason: str) -> None:
        items.append(
            DriftItem(
                what=what,
                locked=None if locked is None else str(locked),
                running=None if now is None else str(now),
                severity=severity,
                reason=reason,
            )
        )

    lp, rp = lock.python, running.python
    if lp.implementation != rp.implementation:
        add("python implementation", lp.implementation, rp.implementation, "critical", "a different interpreter")
    if _minor(lp.version) != _minor(rp.version):
        add("python", lp.version, rp.version, "critical", "another Python minor version")
    elif lp.version != rp.version:
        add("python", lp.version, rp.version, "info", "a Python patch release")
    if lock.platform.machine != running.platform.machine:
        add(
            "cpu architecture",
            lock.platform.machine,
            running.platform.machine,
            "critical",
            "other kernels and rounding",
        )
    if lock.platform.system != running.platform.system:
        add("os", lock.platform.system, running.platform.system, "notable", "another operating system")
    if lock.platform.libc != running.platform.libc:
        add("libc", lock.platform.libc, running.platform.libc, "notable", "math library differences")
    if lock.platform.release != running.platform.release:
        add("kernel release", lock.platform.release, running.platform.release, "info", "rarely affects numerics")
    locked_flags, running_flags = set(lock.cpu.numeric_flags), set(running.cpu.numeric_flags)
    if locked_flags != running_flags:
        missing = sorted(locked_flags - running_flags)
        extra = sorted(running_flags - locked_flags)
        add(
            "cpu features",
            " ".join(missing) or "-",
            " ".join(extra) or "-",
            "notable",
            "ONNX Runtime and numpy pick other kernels ("
            + ", ".join(
                [f"missing here: {' '.join(missing)}"] * bool(missing) + [f"new here: {' '.join(extra)}"] * bool(extra)
            )
            + ")",
        )
    if lock.onnxruntime.version != running.onnxruntime.version:
        add(
            "onnxruntime",
            lock.onnxruntime.version,
            running.onnxruntime.version,
            "critical",
            "the runtime that executes the graph",
        )
    for provider in validated_providers or []:
        if provider not in running.onnxruntime.providers:
            add(
                f"execution provider {provider}", "available", "missing", "critical", "the bundle was validated with it"
            )
    if set(lock.onnxruntime.providers) != set(running.onnxruntime.providers):
        add(
            "available execution providers",
            ", ".join(lock.onnxruntime.providers),
            ", ".join(running.onnxruntime.providers),
            "info",
            "only the validated providers matter",
        )

    for name, version in lock.serving.items():
        now = running.distributions.get(name)
        if now == version:
            continue
        if name == "numpy" and _major(version) != _major(now):
            add(name, version, now, "critical", "another numpy major version")
        elif name == "onnxruntime":
            continue  # reported above from the runtime itself
        else:
            add(name, version, now, "notable", "a serving dependency" + (" (not installed)" if now is None else ""))
    training_only = {
        n: v for n, v in lock.distributions.items() if n not in lock.serving and n != SELF and n not in TOOLING
    }
    absent = sorted(n for n in training_only if n not in running.distributions)
    moved = sorted(n for n, v in training_only.items() if n in running.distributions and running.distributions[n] != v)
    if absent:
        shown = ", ".join(absent[:8]) + (f" and {len(absent) - 8} more" if len(absent) > 8 else "")
        add("training-only packages", f"{len(absent)} installed", "absent", "info", f"not needed to serve: {shown}")
    if moved:
        shown = ", ".join(f"{n} {training_only[n]}->{running.distributions[n]}" for n in moved[:8])
        add(
            "training-only packages",
            f"{len(moved)} at other versions",
            "changed",
            "info",
            f"not needed to serve: {shown}",
        )
    if lock.torch is not None and "torch" not in running.distributions:
        add("torch", lock.torch.version, None, "info", "absent on the serving side by design")
    if lock.threads != running.threads:
        add(
            "thread variables",
            _env_text(lock.threads),
            _env_text(running.threads),
            "info",
            "thread counts move results by float32 noise only",
        )
    order = {"critical": 0, "notable": 1, "info": 2}
    return sorted(items, key=lambda item: order[item.severity])


def _env_text(values: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(values.items())) or "(none)"


def check_policy(policy: str) -> None:
    """Refuse an unknown drift policy: a usage error, best raised before any work is done."""
    if policy not in POLICIES:
        raise UsageError(f"environment policy {policy!r} is not one of {', '.join(POLICIES)}.")


def apply_policy(items: list[DriftItem], policy: str) -> DriftReport:
    """Judge drift under ``policy``.

    Raises:
        UsageError: an unknown policy.
        EnvironmentRefused: ``strict`` and at least one critical difference.
    """
    check_policy(policy)
    critical = [item for item in items if item.severity == "critical"]
    if policy == "strict" and critical:
        listed = "; ".join(f"{i.what} {i.locked} -> {i.running} ({i.reason})" for i in critical)
        raise EnvironmentRefused(
            f"this environment differs critically from the bundle's lock: {listed}. Install the bundle's "
            "requirements-serve.txt (or run `bundle rehearse`), or pass --env-policy warn to check anyway."
        )
    return DriftReport(policy=policy, items=items, refused=False)  # type: ignore[arg-type]
