"""The environment: capture at export, the lockfile format and the serving pins.

``environment.lock.json`` records what validated the bundle; ``requirements-serve.txt``
pins the serving dependencies (and their installed closure) as they were then. At
check time the running environment is captured the same way and compared with the
lock (:mod:`.drift`).
"""

from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from ..bundle.strict import StrictModel, load_json_document, validation_summary
from ..errors import BundleInvalid

# The serving core: what `bundle check` and `bundle serve` import.
SERVING_ROOTS = (
    "onnxruntime",
    "onnx",
    "numpy",
    "pydantic",
    "typer",
    "rich",
    "packaging",
    "starlette",
    "uvicorn",
    "prometheus-client",
    "uvloop",
    "httptools",
    "orjson",
)
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ORT_NUM_THREADS",
    "OPENBLAS_CORETYPE",
)
# CPU features whose presence changes which kernels (and so which rounding) run.
NUMERIC_CPU_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "sve2",
)
SELF = "paritybundle"
# Installer tooling: present in every venv at whatever version, never imported to serve.
TOOLING = frozenset({"pip", "setuptools", "wheel", "distribute"})


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
        if name and version:
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
    # ONNX Runtime's GPU build installs as onnxruntime-gpu (the same import name).
    pending = [canonical(r) for r in roots] + [d for d in ORT_DISTRIBUTIONS if d in installed]
    while pending:
        name = pending.pop()
        if name in closure or name not in installed or name == SELF:
            continue
        closure[name] = installed[name]
        pending.extend(_requirements_of(name))
    return dict(sorted(closure.items()))


# Execution providers that need ONNX Runtime's GPU build (the onnxruntime-gpu distribution).
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def serve_requirements_text(lock: EnvironmentLock, providers: tuple[str, ...] | list[str] = ()) -> str:
    """``requirements-serve.txt``: exact pins of the serving closure recorded in ``lock``. A bundle
    validated with a GPU provider (``providers``) pins ``onnxruntime-gpu`` at the lock's ONNX Runtime
    version, whichever build exported it: the CPU build has no CUDA provider to serve with."""
    gpu = bool(GPU_PROVIDERS & set(providers))
    lines = [
        "# Exact pins of the serving dependencies as installed when this bundle was validated.",
        f"# Python {lock.python.version} ({lock.python.implementation}), {lock.platform.machine}.",
        f"# paritybundle {lock.paritybundle} is installed separately (bundle rehearse / build-image do it).",
    ]
    if gpu:
        lines.append(f"# Validated with {', '.join(providers)}: ONNX Runtime's GPU build.")
    pins = {name: version for name, version in lock.serving.items() if not (gpu and name in ORT_DISTRIBUTIONS)}
    if gpu and lock.onnxruntime.version:
        pins["onnxruntime-gpu"] = lock.onnxruntime.version
    lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
    return "\n".join(lines) + "\n"


def _self_version() -> str:
    from ..version import __version__

    return __version__


def cpu_info() -> CpuInfo:
    """The CPU model and its numerics-relevant flags, from what the platform exposes."""
    model: str | None = None
    flags: set[str] = set()
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


def capture(
    torch_info: TorchInfo | None = None, *, with_closure: bool = True, extra_roots: tuple[str, ...] = ()
) -> EnvironmentLock:
    """The running environment, in the lockfile's shape.

    Args:
        torch_info: torch's version and CUDA/cuDNN, supplied by the training side
            (this module never imports torch).
        with_closure: resolve the serving dependency closure (export needs it; a
            drift comparison does not, and it costs a METADATA parse per package).
        extra_roots: serving dependencies this bundle adds (a frozen tokenizer's onnxruntime-extensions).
    """
    libc_name, libc_version = platform.libc_ver()
    installed = installed_distributions()
    return EnvironmentLock(
        python=PythonInfo(version=platform.python_version(), implementation=platform.python_implementation()),
        platform=PlatformInfo(
            system=platform.system(),
            release=platform.release(),
            machine=platform.machine(),
            libc=f"{libc_name} {libc_version}".strip(),
        ),
        cpu=cpu_info(),
        threads={name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
        onnxruntime=_onnxruntime_info(),
        torch=torch_info,
        paritybundle=_self_version(),
        distributions=installed,
        serving=serving_closure(SERVING_ROOTS + extra_roots, installed=installed) if with_closure else {},
    )


def parse_lock(raw: bytes, *, source: str) -> EnvironmentLock:
    """Parse a lockfile; anything malformed is a bundle error (exit 3)."""
    load_json_document(
        raw, source, "environment lock"
    )  # duplicate keys, huge integers, deep nesting: refused with one sentence
    try:
        return EnvironmentLock.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise BundleInvalid(
            f"{source} is not a valid environment lock ({validation_summary(exc)}); re-export the bundle."
        ) from None
