"""``bundle rehearse``: prove a bundle serves correctly from its lockfile alone.

A clean virtual environment is created outside the bundle, exactly
``requirements-serve.txt`` is installed into it (plus paritybundle itself, without
dependencies), and ``bundle check`` runs inside it under the strict drift policy.
The report says the verdict and how long the install took; the environment is
removed afterwards unless asked to keep it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from ..bundle.store import open_bundle
from ..bundle.strict import StrictModel
from ..check.results import CheckReport
from ..errors import EnvironmentRefused, UsageError
from .pip import package_source, pip_reason

# pip is quiet about progress but keeps its errors; no version nag, no user site.
_PIP = ("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q")
INSTALL_TIMEOUT_S = 1800
CHECK_TIMEOUT_S = 900


class RehearsalReport(StrictModel):
    schema_version: Literal[1] = 1
    bundle: str
    python: str
    venv: str | None
    package_source: str
    venv_seconds: float
    install_seconds: float
    check_seconds: float
    exit_code: int
    check: CheckReport | None
    message: str

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def __bool__(self) -> bool:
        return self.passed


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"  # the user's site-packages would leak into the clean room
    return env


def rehearse(
    path: str | os.PathLike[str],
    *,
    python: str = sys.executable,
    package: str | None = None,
    keep: str | os.PathLike[str] | None = None,
    extra_pip_args: tuple[str, ...] = (),
) -> RehearsalReport:
    """Build a clean venv from ``requirements-serve.txt`` and run ``bundle check`` inside it.

    Args:
        path: the bundle directory.
        python: the interpreter that creates the venv.
        package: paritybundle's wheel or source directory (default: where it was installed from).
        keep: create the venv at this path and keep it (default: a temp dir, removed).
        extra_pip_args: passed to both pip installs (e.g. an index URL).

    Returns:
        A :class:`RehearsalReport`; truthy when the check inside exited 0.

    Raises:
        BundleInvalid: the bundle fails integrity (checked before anything is installed).
        UsageError: paritybundle's own source cannot be found, or ``keep`` exists.
        EnvironmentRefused: the venv cannot be created or pip cannot install the pins.
    """
    bundle = open_bundle(path)
    requirements = bundle.path(bundle.manifest.serve_requirements)
    source = package or package_source()
    parent = None if keep else tempfile.mkdtemp(prefix="paritybundle-rehearse-")
    venv = Path(keep) if keep else Path(parent) / "venv"  # type: ignore[arg-type]
    if keep and venv.exists():
        raise UsageError(f"{venv} already exists; choose a new path for --keep-venv.")
    env = _env()
    try:
        started = time.perf_counter()
        try:
            made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True, env=env)
        except OSError as exc:
            raise UsageError(
                f"cannot run --python {python} ({exc.strerror}); pass an interpreter that exists."
            ) from None
        if made.returncode != 0:
            raise EnvironmentRefused(f"creating a virtual environment with {python} failed: {pip_reason(made.stderr)}")
        venv_python = str(venv / "bin" / "python")
        venv_seconds = time.perf_counter() - started

        started = time.perf_counter()
        for args, what in (
            ((*_PIP, "-r", str(requirements), *extra_pip_args), "requirements-serve.txt"),
            ((*_PIP, "--no-deps", source, *extra_pip_args), f"paritybundle from {source}"),
        ):
            try:
                installed = subprocess.run(
                    [venv_python, *args], capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                raise EnvironmentRefused(
                    f"installing {what} took over {INSTALL_TIMEOUT_S} s; is the package index reachable?"
                ) from None
            if installed.returncode != 0:
                raise EnvironmentRefused(
                    f"installing {what} into a clean environment failed, so this bundle cannot be served from its "
                    f"lock here: {pip_reason(installed.stderr + installed.stdout)}"
                )
        install_seconds = time.perf_counter() - started

        started = time.perf_counter()
        report_path = venv.parent / f".{venv.name}-check.json" if keep else Path(parent) / "check.json"  # type: ignore[arg-type]
        checked = subprocess.run(
            [
                venv_python,
                "-m",
                "paritybundle.cli",
                "check",
                str(bundle.root),
                "--env-policy",
                "strict",
                "--json",
                str(report_path),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=CHECK_TIMEOUT_S,
        )
        check_seconds = time.perf_counter() - started
        report = None
        if report_path.exists():
            report = CheckReport.model_validate_json(report_path.read_text())
            report_path.unlink()
        message = " ".join((checked.stderr.strip().splitlines() or [""])[-1:]) if checked.returncode else ""
        if checked.returncode == 70:
            message = "the check inside the clean environment crashed: " + checked.stderr[-2000:]
        return RehearsalReport(
            bundle=str(bundle.root),
            python=subprocess.run(
                [venv_python, "-c", "import platform; print(platform.python_version())"],
                capture_output=True,
                text=True,
                env=env,
            ).stdout.strip(),
            venv=str(venv) if keep else None,
            package_source=source,
            venv_seconds=venv_seconds,
            install_seconds=install_seconds,
            check_seconds=check_seconds,
            exit_code=checked.returncode,
            check=report,
            message=message,
        )
    finally:
        if parent is not None:
            shutil.rmtree(parent, ignore_errors=True)
