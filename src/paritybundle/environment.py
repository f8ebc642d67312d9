"""Capture of the environment at export, and the serving side's exact pins.

``environment.lock.json`` records what validated the bundle; ``requirements-serve.txt``
pins the serving dependencies (and their installed closure) as they were then.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from importlib import metadata
from typing import Any

# The serving core: what `bundle check` and `bundle serve` import.
SERVING_ROOTS = ("onnxruntime", "onnx", "numpy", "pydantic", "typer", "rich", "packaging")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")
SELF = "paritybundle"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """Every installed distribution, canonical name -> exact version."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_canonical(name), dist.version)
    return dict(sorted(found.items()))


def _requirements_of(name: str) -> list[str]:
    """Names of the installed requirements of ``name`` that apply here (no extras)."""
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
        names.append(_canonical(req.name))
    return names


def serving_closure(roots: tuple[str, ...] = SERVING_ROOTS) -> dict[str, str]:
    """The serving roots and everything they require, as installed: name -> version."""
    installed = installed_distributions()
    closure: dict[str, str] = {}
    pending = [_canonical(r) for r in roots]
    while pending:
        name = pending.pop()
        if name in closure or name not in installed or name == SELF:
            continue
        closure[name] = installed[name]
        pending.extend(_requirements_of(name))
    return dict(sorted(closure.items()))


def serve_requirements_text() -> str:
    """``requirements-serve.txt``: exact pins of the serving closure."""
    lines = [
        "# Exact pins of the serving dependencies as installed when this bundle was validated.",
        f"# paritybundle itself ({_self_version()}) is installed separately.",
    ]
    lines += [f"{name}=={version}" for name, version in serving_closure().items()]
    return "\n".join(lines) + "\n"


def _self_version() -> str:
    try:
        return metadata.version(SELF)
    except metadata.PackageNotFoundError:
        return "unknown"


def capture() -> dict[str, Any]:
    """The running environment as a JSON-able dict (the lockfile's content)."""
    libc_name, libc_version = platform.libc_ver()
    lock: dict[str, Any] = {
        "lock_version": 1,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "libc": f"{libc_name} {libc_version}".strip(),
        },
        "threads": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
        "paritybundle": _self_version(),
        "distributions": installed_distributions(),
        "serving": serving_closure(),
    }
    return lock


def lock_json() -> str:
    return json.dumps(capture(), indent=2, sort_keys=False) + "\n"
