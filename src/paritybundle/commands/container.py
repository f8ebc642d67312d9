"""``bundle build-image``: the serving image of a bundle, built through the Docker SDK.

The build context is assembled here: the verified bundle, a wheelhouse holding
exactly the bundle's ``requirements-serve.txt`` (downloaded with pip for the
lock's Python version and platform) plus this package's wheel, and
``Dockerfile.serve``. The image's build then installs with ``--no-index`` (hermetic,
matching the lock) and runs ``bundle check`` inside itself: an image whose parity
fails is never tagged. The build uses the daemon's classic builder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..bundle.layout import MANIFEST_NAME, SIGNATURE_NAME
from ..bundle.store import VerifiedBundle, open_bundle
from ..errors import (
    ContainerError,
    EnvironmentRefused,
    ImageBuildError,
    ParityBundleError,
    UsageError,
    error_for_exit_code,
)
from ..runtime.load import read_lock
from ..runtime.lock import EnvironmentLock
from .pip import package_source, pip_reason

DEFAULT_BASE_IMAGE = "python:3.11-slim"
DOCKERFILE = "Dockerfile.serve"


@dataclass(frozen=True)
class ImageResult:
    tag: str
    image_id: str
    base_image: str


def dockerfile_text() -> str:
    """The ``Dockerfile.serve`` shipped with this package."""
    return resources.files("paritybundle").joinpath(DOCKERFILE).read_text()


@dataclass(frozen=True)
class TargetPython:
    """The Python the wheels are for: the base image's (probed), or the lock's without a daemon."""

    version: str  # e.g. "3.11.2"
    machine: str  # e.g. "x86_64"
    libc: str | None  # e.g. "glibc 2.36"

    @classmethod
    def of_lock(cls, lock: EnvironmentLock) -> TargetPython:
        return cls(lock.python.version, lock.platform.machine, lock.platform.libc)


def platform_tags(target: TargetPython) -> list[str]:
    """pip ``--platform`` tags for the target's machine and glibc (every manylinux the glibc can run)."""
    machine = target.machine
    match = re.match(r"glibc (\d+)\.(\d+)", target.libc or "")
    minor = int(match.group(2)) if match and match.group(1) == "2" else 17
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 4, -1)]
    legacy = {"x86_64": ["manylinux2014", "manylinux2010", "manylinux1"], "aarch64": ["manylinux2014"]}
    tags += [f"{name}_{machine}" for name in legacy.get(machine, [])]
    return tags + [f"linux_{machine}"]


def _pip(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise ContainerError(f"pip could not prepare the wheelhouse: {pip_reason(result.stdout + result.stderr)}")
    return result.stdout


def build_context(
    bundle: VerifiedBundle,
    folder: Path,
    *,
    wheelhouse: Path | None = None,
    package: str | None = None,
    target: TargetPython | None = None,
) -> Path:
    """Write the build context into ``folder``: ``Dockerfile``, ``bundle/``, ``wheelhouse/``.

    Args:
        wheelhouse: a directory of wheels to use instead of downloading (offline builds).
        package: paritybundle's wheel or source directory (default: where it was installed from).
        target: the Python the wheels are downloaded for (default: the lock's).
    """
    manifest = bundle.manifest
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(dockerfile_text())
    bundle_copy = folder / "bundle"
    bundle_copy.mkdir()
    # The verified files and the two unlisted ones; the in-image check verifies them all again.
    unlisted = [name for name in (MANIFEST_NAME, SIGNATURE_NAME) if (bundle.root / name).is_file()]
    for relative in [*manifest.files, *unlisted]:
        destination = bundle_copy / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle.root / relative, destination)
    wheels = folder / "wheelhouse"
    if wheelhouse is not None:
        if not wheelhouse.is_dir():
            raise UsageError(f"wheelhouse {wheelhouse} is not a directory of wheels.")
        shutil.copytree(wheelhouse, wheels)
    else:
        target = target or TargetPython.of_lock(read_lock(bundle))
        major, minor = target.version.split(".")[:2]
        platforms = [arg for tag in platform_tags(target) for arg in ("--platform", tag)]
        _pip(
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--python-version",
            f"{major}.{minor}",
            "--implementation",
            "cp",
            "--abi",
            f"cp{major}{minor}",
            *platforms,
            "-r",
            str(bundle.path(manifest.serve_requirements)),
            "-d",
            str(wheels),
        )
    if not any(wheels.glob("paritybundle-*.whl")):
        source = package or package_source()
        if source.endswith(".whl"):
            shutil.copy(source, wheels)
        else:
            _pip("wheel", "--quiet", "--no-deps", "-w", str(wheels), source)
    return folder


def write_context(
    path: str | os.PathLike[str],
    folder: Path,
    *,
    wheelhouse: Path | None = None,
    package: str | None = None,
    public_key: str | os.PathLike[str] | None = None,
) -> Path:
    """Verify the bundle and write its build context into the new directory ``folder`` (for your own builder).

    Raises:
        UsageError: ``folder`` exists.
        BundleInvalid: the bundle fails integrity (nothing is written).
    """
    if folder.exists():
        raise UsageError(f"{folder} already exists; --context writes a new directory.")
    bundle = open_bundle(path, public_key)
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(f"cannot write {folder} ({exc.strerror}); choose a writable path.") from None
    return build_context(bundle, folder, wheelhouse=wheelhouse, package=package)


def _client():
    try:
        import docker
    except ImportError:
        raise UsageError("building images needs the Docker SDK; pip install 'paritybundle[container]'.") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker raises DockerException, requests' ConnectionError, FileNotFoundError...
        reason = " ".join(str(exc).split())[:300]
        raise ContainerError(f"no Docker daemon answers ({reason}); start Docker or set DOCKER_HOST.") from None
    return client


def _ensure_base_image(client, base_image: str) -> None:
    import docker

    try:
        client.images.get(base_image)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(base_image)
    except docker.errors.APIError as exc:
        reason = " ".join(str(getattr(exc, "explanation", None) or exc).split())[:300]
        raise ContainerError(
            f"base image {base_image!r} is not present locally and cannot be pulled ({reason}); "
            "pull or import it first, or pass --base-image."
        ) from None


_PROBE = (
    "import platform, sys; print(platform.python_version(), platform.machine(), "
    "' '.join(platform.libc_ver()).strip() or '-', sep='|')"
)


def image_python(client, base_image: str) -> TargetPython:
    """The Python inside ``base_image`` (one throwaway container), so the wheels fit it."""
    try:
        raw = client.containers.run(
            base_image, ["python3", "-c", _PROBE], remove=True, entrypoint=[], network_disabled=True
        )
    except Exception as exc:  # ContainerError (no python3), ImageNotFound, APIError
        reason = " ".join(str(exc).split())[:300]
        raise ContainerError(
            f"base image {base_image!r} has no usable python3 ({reason}); choose an image with "
            "Python 3 and its venv module, e.g. python:3.11-slim."
        ) from None
    version, machine, libc = raw.decode().strip().splitlines()[-1].split("|")
    return TargetPython(version, machine, None if libc == "-" else libc)


def check_target(lock: EnvironmentLock, target: TargetPython, base_image: str) -> None:
    """Refuse, before building, a base image whose Python minor version or architecture differ from the
    lock's: the in-image check would refuse it anyway (critical drift), after minutes of building."""
    locked = ".".join(lock.python.version.split(".")[:2])
    found = ".".join(target.version.split(".")[:2])
    if locked != found or lock.platform.machine != target.machine:
        raise EnvironmentRefused(
            f"base image {base_image!r} has Python {target.version} on {target.machine}, but the bundle was validated "
            f"with Python {lock.python.version} on {lock.platform.machine}; choose a base image with Python {locked} "
            f"(e.g. python:{locked}-slim)."
        )


def build_image(
    path: str | os.PathLike[str],
    tag: str,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    wheelhouse: Path | None = None,
    package: str | None = None,
    public_key: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ImageResult:
    """Build and tag the serving image of the bundle at ``path``.

    The bundle is verified first and the base image's Python probed (the wheels are
    downloaded for it; a Python minor version or architecture other than the lock's is
    refused before building); the build runs ``bundle check`` inside the image and fails,
    tagging nothing, unless parity holds there.

    Raises:
        BundleInvalid: the bundle fails integrity (before anything is built).
        ContainerError: no daemon, a missing base image (or one without python3).
        ImageBuildError: the build itself failed (exit 6).
        EnvironmentRefused: the base image's Python is not the lock's.
        ParityFailure / BundleInvalid / EnvironmentRefused: the in-image check failed (exit 1 / 3 / 4).
    """
    if not tag or any(c.isspace() for c in tag):
        raise UsageError(f"image tag {tag!r} is not valid; use NAME[:VERSION], e.g. digits:1.")
    bundle = open_bundle(path, public_key)
    client = _client()
    _ensure_base_image(client, base_image)
    target = image_python(client, base_image)
    check_target(read_lock(bundle), target, base_image)
    with tempfile.TemporaryDirectory(prefix="paritybundle-image-") as folder:
        context = build_context(bundle, Path(folder), wheelhouse=wheelhouse, package=package, target=target)
        image_id = _run_build(client, context, tag, base_image, progress or (lambda line: None))
    return ImageResult(tag=tag, image_id=image_id, base_image=base_image)


def _run_build(client, context: Path, tag: str, base_image: str, progress: Callable[[str], None]) -> str:
    step_output: list[str] = []
    image_id = ""
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs={"BASE_IMAGE": base_image},
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    progress(line)
                    if line.startswith("Step "):
                        step_output.clear()
                    step_output.append(line)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "error" in chunk:
                _raise_build_error(chunk["error"], step_output)
    except ParityBundleError:  # ours, already one sentence with its exit code
        raise
    except Exception as exc:  # the SDK's APIError/BuildError, or the daemon going away mid-build
        raise ImageBuildError(f"the image build failed: {' '.join(str(exc).split())[:600]}") from None
    return image_id


def _raise_build_error(error: str, step_output: list[str]) -> None:
    """The build's own error; an in-image ``bundle check`` failure keeps its exit code's meaning."""
    message = " ".join(error.split())
    code = re.search(r"returned a non-zero code: (\d+)", message)
    if code and "bundle check" in message:
        exit_code = int(code.group(1))
        important = [
            line.strip()
            for line in step_output
            if any(key in line for key in ("failed", "FAILS", "where:", "error:", "refused", "critical"))
        ]
        detail = " ".join(important[-6:]) or " ".join(" ".join(step_output[-5:]).split())
        text = f"the in-image `bundle check` failed (exit {exit_code}), so no image was tagged: {detail[:1500]}"
        raise (error_for_exit_code(exit_code) or ImageBuildError)(text)
    raise ImageBuildError(f"the image build failed: {message[:1500]}")
