"""The environment: capture at export, the lockfile format, serving pins, and drift.

``environment.lock.json`` records what validated the bundle; ``requirements-serve.txt``
pins the serving dependencies (and their installed closure) as they were then. At
check time the running environment is captured the same way and compared with the
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

import functools
import os
import platform
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from .strict import StrictModel
from .errors import BundleInvalid, EnvironmentRefused, UsageError

# The serving core: what `bundle check` and `bundle serve` import.
SERVING_ROOTS = ("onnxruntime", "onnx", "numpy", "pydantic", "typer", "rich", "packaging",
                 "starlette", "uvicorn", "prometheus-client", "uvloop", "httptools", "orjson")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS",
                    "OPENBLAS_CORETYPE")
# CPU features whose presence changes which kernels (and so which rounding) run.
NUMERIC_CPU_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
SELF = "paritybundle"
# Installer tooling: present in every venv at whatever version, never imported to serve.
TOOLING = frozenset({"pip", "setuptools", "wheel", "distribute"})
POLICIES = ("strict", "warn", "ignore")
Policy = Literal["strict", "warn", "ignore"]
Severity = Literal["critical", "notable", "info"]
DEFAULT_POLICY: Policy = "strict"


class PythonInfo(StrictModel):
    version: str
    implementation: str


class PlatformInfo(StrictModel):
    system: str
    release: str
    machine: str
    libc: str


class CpuInfo(StrictModel):
    model: str | None
    numeric_flags: list[str]


class RuntimeInfo(StrictModel):
    version: str | None
    providers: list[str]


class TorchInfo(StrictModel):
    version: str
    cuda: str | None
    cudnn: int | None
    device_name: str | None


class EnvironmentLock(StrictModel):
    """``environment.lock.json``."""

    lock_version: Literal[1] = 1
    python: PythonInfo
    platform: PlatformInfo
    cpu: CpuInfo
    threads: dict[str, str]
    onnxruntime: RuntimeInfo
    torch: TorchInfo | None = None
    paritybundle: str
    distributions: dict[str, str]
    serving: dict[str, str]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """Every installed distribution, canonical name -> exact version.

    A wheel's ``NAME-VERSION.dist-info`` directory name already says both (the wheel
    spec escapes ``-`` out of each part), so METADATA is parsed only for other
    layouts: parsing it for every distribution took ~20 ms, a check's whole budget.
    """
    from importlib import metadata  # imported when an environment is read, not by every import of this module

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        location = getattr(dist, "_path", None)
        stem = location.name[: -len(".dist-info")] if location and location.name.endswith(".dist-info") else ""
        name, sep, version = stem.partition("-")
        if not (sep and name and version and "-" not in version):
            name, version = _name_and_version(dist)
        if name:
            found.setdefault(canonical(name), version)
    return dict(sorted(found.items()))


def _name_and_version(dist: Any) -> tuple[str | None, str | None]:
    """Name and Version from the metadata headers alone: the email parser would also read
    the long description (a whole README) that follows them."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line
        key, _, value = line.partition(":")
        if key in ("Name", "Version"):
            found.setdefault(key, value.strip())
    return found.get("Name"), found.get("Version")


def _requirements_of(name: str) -> list[str]:
    """Names of the installed requirements of ``name`` that apply here (no extras)."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    names = []
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        names.append(canonical(req.name))
    return names


def serving_closure(roots: tuple[str, ...] = SERVING_ROOTS, installed: dict[str, str] | None = None) -> dict[str, str]:
    """The serving roots and everything they require, as installed: name -> version."""
    installed = installed if installed is not None else installed_distributions()
    closure: dict[str, str] = {}
    pending = [canonical(r) for r in roots]
    while pending:
        name = pending.pop()
        if name in closure or name not in installed or name == SELF:
            continue
        closure[name] = installed[name]
        pending.extend(_requirements_of(name))
    return dict(sorted(closure.items()))


def serve_requirements_text(lock: EnvironmentLock) -> str:
    """``requirements-serve.txt``: exact pins of the serving closure recorded in ``lock``."""
    lines = [
        "# Exact pins of the serving dependencies as installed when this bundle was validated.",
        f"# Python {lock.python.version} ({lock.python.implementation}), {lock.platform.machine}.",
        f"# paritybundle {lock.paritybundle} is installed separately (bundle rehearse / build-image do it).",
    ]
    lines += [f"{name}=={version}" for name, version in lock.serving.items()]
    return "\n".join(lines) + "\n"


def _self_version() -> str:
    from . import __version__

    return __version__


def _cpu_info() -> CpuInfo:
    """The CPU model and its numerics-relevant flags, from what the platform exposes."""
    model, flags = None, set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if not text:
        model = platform.processor() or None
    return CpuInfo(model=model, numeric_flags=sorted(f for f in NUMERIC_CPU_FLAGS if f in flags))


@functools.lru_cache(maxsize=1)
def _onnxruntime_info() -> RuntimeInfo:
    # get_available_providers() costs ~5 ms a call and cannot change within a process.
    try:
        import onnxruntime
    except ImportError:
        return RuntimeInfo(version=None, providers=[])
    return RuntimeInfo(version=onnxruntime.__version__, providers=list(onnxruntime.get_available_providers()))


def capture(torch_info: TorchInfo | None = None, *, with_closure: bool = True) -> EnvironmentLock:
    """The running environment, in the lockfile's shape.

    Args:
        torch_info: torch's version and CUDA/cuDNN, supplied by the training side
            (this module never imports torch).
        with_closure: resolve the serving dependency closure (export needs it; a
            drift comparison does not, and it costs a METADATA parse per package).
    """
    libc_name, libc_version = platform.libc_ver()
    installed = installed_distributions()
    return EnvironmentLock(
        python=PythonInfo(version=platform.python_version(), implementation=platform.python_implementation()),
        platform=PlatformInfo(system=platform.system(), release=platform.release(), machine=platform.machine(),
                              libc=f"{libc_name} {libc_version}".strip()),
        cpu=_cpu_info(),
        threads={name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
        onnxruntime=_onnxruntime_info(),
        torch=torch_info,
        paritybundle=_self_version(),
        distributions=installed,
        serving=serving_closure(installed=installed) if with_closure else {},
    )


def parse_lock(raw: bytes, *, source: str) -> EnvironmentLock:
    """Parse a lockfile; anything malformed is a bundle error (exit 3)."""
    try:
        return EnvironmentLock.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BundleInvalid(f"{source} is not a valid environment lock ({where}: {first['msg']}); "
                            "re-export the bundle.") from None


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


def diff_environments(lock: EnvironmentLock, running: EnvironmentLock,
                      validated_providers: list[str] | None = None) -> list[DriftItem]:
    """Every difference between ``lock`` and ``running``, classified, most severe first."""
    items: list[DriftItem] = []

    def add(what: str, locked: Any, now: Any, severity: Severity, reason: str) -> None:
        items.append(DriftItem(what=what, locked=None if locked is None else str(locked),
                               running=None if now is None else str(now), severity=severity, reason=reason))

    lp, rp = lock.python, running.python
    if lp.implementation != rp.implementation:
        add("python implementation", lp.implementation, rp.implementation, "critical", "a different interpreter")
    if _minor(lp.version) != _minor(rp.version):
        add("python", lp.version, rp.version, "critical", "another Python minor version")
    elif lp.version != rp.version:
        add("python", lp.version, rp.version, "info", "a Python patch release")
    if lock.platform.machine != running.platform.machine:
        add("cpu architecture", lock.platform.machine, running.platform.machine, "critical",
            "other kernels and rounding")
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
        add("cpu features", " ".join(missing) or "-", " ".join(extra) or "-", "notable",
            "ONNX Runtime and numpy pick other kernels (" + ", ".join(
                [f"missing here: {' '.join(missing)}"] * bool(missing) + [f"new here: {' '.join(extra)}"] * bool(extra)) + ")")
    if lock.onnxruntime.version != running.onnxruntime.version:
        add("onnxruntime", lock.onnxruntime.version, running.onnxruntime.version, "critical",
            "the runtime that executes the graph")
    for provider in validated_providers or []:
        if provider not in running.onnxruntime.providers:
            add(f"execution provider {provider}", "available", "missing", "critical",
                "the bundle was validated with it")
    if set(lock.onnxruntime.providers) != set(running.onnxruntime.providers):
        add("available execution providers", ", ".join(lock.onnxruntime.providers),
            ", ".join(running.onnxruntime.providers), "info", "only the validated providers matter")

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
    training_only = {n: v for n, v in lock.distributions.items()
                     if n not in lock.serving and n != SELF and n not in TOOLING}
    absent = sorted(n for n in training_only if n not in running.distributions)
    moved = sorted(n for n, v in training_only.items() if n in running.distributions and running.distributions[n] != v)
    if absent:
        shown = ", ".join(absent[:8]) + (f" and {len(absent) - 8} more" if len(absent) > 8 else "")
        add("training-only packages", f"{len(absent)} installed", "absent", "info",
            f"not needed to serve: {shown}")
    if moved:
        shown = ", ".join(f"{n} {training_only[n]}->{running.distributions[n]}" for n in moved[:8])
        add("training-only packages", f"{len(moved)} at other versions", "changed", "info", f"not needed to serve: {shown}")
    if lock.torch is not None and "torch" not in running.distributions:
        add("torch", lock.torch.version, None, "info", "absent on the serving side by design")
    if lock.threads != running.threads:
        add("thread variables", _env_text(lock.threads), _env_text(running.threads), "info",
            "thread counts move results by float32 noise only")
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
