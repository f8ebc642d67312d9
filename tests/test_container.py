"""Containers: Dockerfile.serve, `bundle build-image` through the Docker SDK, a real serving
container checked with `bundle check --url`, and Dockerfile.train exporting into a volume.

The tests that need a Docker engine skip, saying why, where none answers; `.ci/run` starts one
(scripts/docker-ci.sh) with a local Debian base image, since image registries are unreachable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require, skip_or_fail  # noqa: E402
from serving_tools import wait_for

from bundle_tools import perturb_weights
from paritybundle.cli import main
from paritybundle.commands.container import dockerfile_text

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = os.environ.get("PARITYBUNDLE_TEST_BASE_IMAGE", "paritybundle-test-base:bookworm")


@pytest.fixture(scope="module")
def docker_client():
    docker = require("docker", reason="the Docker SDK is not installed (pip install 'paritybundle[container]')")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        skip_or_fail(
            f"no Docker engine answers ({type(exc).__name__}); scripts/docker-ci.sh start runs one, as .ci/run does"
        )
    return client


@pytest.fixture(scope="module")
def base_image(docker_client):
    import docker

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        skip_or_fail(f"base image {BASE_IMAGE} is not present; scripts/docker-ci.sh start builds it with debootstrap")
    return BASE_IMAGE


def remove_image(client, tag):
    import docker

    try:
        client.images.remove(tag, force=True)
    except docker.errors.ImageNotFound:
        pass


# --- no engine needed ------------------------------------------------------------------------


def instructions(text):
    """A Dockerfile's instructions, one string each, continuation lines joined, comments dropped."""
    found, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line}".strip()
        if current.endswith("\\"):
            current = current[:-1].strip()
        else:
            found.append(current)
            current = ""
    return found


def test_dockerfile_serve_builds_classically_and_gates_on_parity():
    text = dockerfile_text()
    assert (ROOT / "Dockerfile.serve").read_text() == text  # the repository's file is the shipped one
    lines = instructions(text)
    assert not any(marker in text for marker in ("--mount", "<<", "# syntax=", "--chmod", "--link"))  # BuildKit only
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim" and lines[1] == "FROM ${BASE_IMAGE}"
    assert "pip install --no-index --find-links /tmp/wheelhouse -r /tmp/requirements-serve.txt" in text
    assert not any("torch" in line for line in lines)  # no instruction mentions torch
    user = next(line for line in lines if line.startswith("USER "))
    check = next(i for i, line in enumerate(lines) if line.startswith("RUN bundle check"))
    assert user == "USER 10001:10001" and lines.index(user) < check  # the check runs as the serving user
    assert "/v2/health/ready" in next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert lines[-1].startswith('CMD ["bundle", "serve"')


def test_context_only_writes_bundle_wheelhouse_and_dockerfile(digits_bundle, tmp_path, capsys):
    context = tmp_path / "context"
    assert main(["build-image", str(digits_bundle), "--context", str(context)]) == 0
    assert (context / "Dockerfile").read_text() == dockerfile_text()
    assert sorted(p.name for p in (context / "bundle").iterdir()) == sorted(p.name for p in digits_bundle.iterdir())
    wheels = {p.name.split("-")[0].lower().replace("_", "-") for p in (context / "wheelhouse").glob("*.whl")}
    pins = {
        line.split("==")[0]
        for line in (digits_bundle / "requirements-serve.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert pins <= wheels and "paritybundle" in wheels and "torch" not in wheels
    assert "docker build --build-arg BASE_IMAGE=" in capsys.readouterr().out


def test_no_engine_is_one_sentence_and_exit_2(digits_bundle, monkeypatch, capsys):
    require("docker", reason="the Docker SDK is not installed (pip install 'paritybundle[container]')")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert main(["build-image", str(digits_bundle), "-t", "x:1"]) == 2
    err = capsys.readouterr().err
    assert "no Docker daemon answers" in err and "start Docker or set DOCKER_HOST" in err and "Traceback" not in err


def test_a_bundle_failing_integrity_is_refused_before_any_build(bundle_copy, capsys):
    (bundle_copy / "model.onnx").write_bytes(b"tampered")
    assert main(["build-image", str(bundle_copy), "-t", "x:1"]) == 3
    assert "model.onnx" in capsys.readouterr().err


def test_a_failed_build_is_exit_6_and_a_failed_in_image_check_keeps_its_own_code():
    """The daemon's own build error is the image build's fault (exit 6), not a usage error; the
    in-image `bundle check` failing keeps the check's meaning (parity 1, bundle 3, environment 4)."""
    from paritybundle.commands.container import _raise_build_error
    from paritybundle.errors import BundleInvalid, EnvironmentRefused, ImageBuildError, ParityFailure

    with pytest.raises(ImageBuildError, match="the image build failed: failed to register layer") as caught:
        _raise_build_error("failed to register layer: no space left on device", [])
    assert caught.value.exit_code == 6
    step = ["Step 9/12 : RUN bundle check /srv/bundle", "error: output 'logits' failed: 3 of 640 elements"]
    for code, expected in ((1, ParityFailure), (3, BundleInvalid), (4, EnvironmentRefused), (70, ImageBuildError)):
        message = f"The command '/bin/sh -c bundle check /srv/bundle' returned a non-zero code: {code}"
        with pytest.raises(expected, match="the in-image `bundle check` failed"):
            _raise_build_error(message, step)


# --- with an engine ------------------------------------------------------------------------------


def test_a_missing_base_image_is_one_sentence_and_exit_2(docker_client, digits_bundle, capsys):
    assert main(["build-image", str(digits_bundle), "-t", "x:1", "--base-image", "paritybundle-no-such-base:0"]) == 2
    err = capsys.readouterr().err
    assert "base image 'paritybundle-no-such-base:0' is not present locally and cannot be pulled" in err


def test_a_base_image_with_another_python_is_refused_before_building(
    docker_client, base_image, digits_bundle, tmp_path, capsys
):
    """The base image's Python is probed: the wheels are for it, and a minor version other than the lock's
    (which the in-image check would refuse after minutes) is refused at once, exit 4."""
    import io
    import tarfile

    shim = b"#!/bin/sh\necho '3.12.1|x86_64|glibc 2.36'\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        for name, data in (
            ("Dockerfile", f"FROM {base_image}\nCOPY python3 /usr/local/bin/python3\n".encode()),
            ("python3", shim),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            archive.addfile(info, io.BytesIO(data))
    context.seek(0)
    tag = "paritybundle-test-python312:1"
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    bare = tmp_path / "bare.tar"  # a root filesystem holding one text file: no shell, no python3
    (tmp_path / "README").write_text("no python here\n")
    with tarfile.open(bare, "w") as archive:
        archive.add(tmp_path / "README", arcname="README")
    no_python = "paritybundle-test-no-python:1"
    docker_client.api.import_image(src=str(bare), repository=no_python.split(":")[0], tag="1")
    try:
        assert main(["build-image", str(digits_bundle), "-t", "x:1", "--base-image", tag]) == 4
        err = capsys.readouterr().err
        assert f"base image '{tag}' has Python 3.12.1 on x86_64, but the bundle was validated with Python 3.11" in err
        assert main(["build-image", str(digits_bundle), "-t", "x:1", "--base-image", no_python]) == 2
        assert f"base image '{no_python}' has no usable python3" in capsys.readouterr().err
    finally:
        remove_image(docker_client, tag)
        remove_image(docker_client, no_python)


def test_the_serving_image_builds_runs_and_reproduces_research_over_http(
    docker_client, base_image, wine_bundle, capsys
):
    from serving_tools import free_port

    tag = "paritybundle-test-wine:1"
    remove_image(docker_client, tag)
    assert main(["build-image", str(wine_bundle), "-t", tag, "--base-image", base_image]) == 0, capsys.readouterr()
    captured = capsys.readouterr()
    assert "PARITY HOLDS" in captured.err  # the in-image check's own output, streamed
    image = docker_client.images.get(tag)
    config = image.attrs["Config"]
    assert config["User"] == "10001:10001" and "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])
    port = free_port()
    # Read-only root filesystem, as deploy/ runs it: the server must write nothing.
    container = docker_client.containers.run(tag, detach=True, read_only=True, ports={"8080/tcp": ("127.0.0.1", port)})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/v2/health/ready", 90, interval=0.5)
        assert main(["check", str(wine_bundle), "--url", url]) == 0
        assert "PARITY HOLDS" in capsys.readouterr().out
        assert container.exec_run(["python3", "-c", "import torch"]).exit_code != 0  # no torch in the image
        assert container.exec_run(["id", "-u"]).output.decode().strip() == "10001"
        # deploy/kubernetes/parity-check-job.yaml's command, from a second container of the same image.
        container.reload()
        address = container.attrs["NetworkSettings"]["IPAddress"]
        job = docker_client.containers.run(
            tag, ["bundle", "check", "/srv/bundle", "--url", f"http://{address}:8080"], read_only=True, detach=True
        )
        assert job.wait(timeout=120)["StatusCode"] == 0, job.logs()[-2000:]
        assert b"PARITY HOLDS" in job.logs()
        job.remove()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            container.reload()
            if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
                break
            time.sleep(1)
        assert container.attrs["State"]["Health"]["Status"] == "healthy"
    finally:
        container.remove(force=True)
        remove_image(docker_client, tag)


def test_an_image_whose_in_image_check_fails_is_never_tagged(docker_client, base_image, bundle_copy, capsys):
    import docker

    perturb_weights(bundle_copy, relative_noise=0.001)  # verifies (re-hashed), but parity fails
    tag = "paritybundle-test-broken:1"
    remove_image(docker_client, tag)
    assert main(["build-image", str(bundle_copy), "-t", tag, "--base-image", base_image, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "the in-image `bundle check` failed (exit 1), so no image was tagged" in err
    assert "output 'logits' failed" in err
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)


def test_the_training_image_exports_a_bundle_into_a_mounted_volume(docker_client, base_image, tmp_path):
    """Dockerfile.train, built hermetically from a wheelhouse (pip cannot reach the index inside a build here)."""
    wheelhouse = ROOT / "wheelhouse"
    download = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "-c",
            str(ROOT / "constraints.txt"),
            "-d",
            str(wheelhouse),
            f"{ROOT}[train,examples]",
            "setuptools>=68",
        ],
        capture_output=True,
        text=True,
    )
    assert download.returncode == 0, download.stderr[-2000:]
    tag = "paritybundle-test-train:1"
    try:
        docker_client.images.build(
            path=str(ROOT),
            dockerfile="Dockerfile.train",
            tag=tag,
            rm=True,
            forcerm=True,
            buildargs={"BASE_IMAGE": base_image},
        )
        out = tmp_path / "out"
        out.mkdir()
        logs = docker_client.containers.run(
            tag,
            ["examples/wine/train.py:make_spec", "-o", "/out/wine"],
            remove=True,
            volumes={str(out): {"bind": "/out", "mode": "rw"}},
            stderr=True,
        )
        assert re.search(rb"exported wine v1 to /out/wine", logs), logs[-2000:]
        # The bundle made in the training image passes the strict check out here.
        assert main(["check", str(out / "wine")]) == 0
    finally:
        remove_image(docker_client, tag)
