"""A real `bundle serve` process on loopback, and a small HTTP helper for tests."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    url: str, timeout: float, *, process: subprocess.Popen | None = None, log: Path | None = None, interval: float = 0.3
) -> None:
    """Until ``url`` answers 200; fails the test past ``timeout`` seconds, or at once when ``process`` (the
    server behind it) exited, quoting the end of its ``log``."""

    def tail() -> str:
        return f": {log.read_text()[-3000:]}" if log is not None else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}{tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(interval)
    raise AssertionError(f"{url} not up after {timeout} s{tail()}")


def wait_gone(pid: int, timeout: float = 30) -> None:
    """Until process ``pid`` has exited (a capture writer, reparented or a zombie once its server is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "zombie" in Path(f"/proc/{pid}/status").read_text():
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} did not exit within {timeout} s")


def http(
    method: str, url: str, body: bytes | str | dict | None = None, timeout: float = 30, headers: dict | None = None
) -> tuple[int, Any]:
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str):
        return http("GET", self.url + path)

    def post(self, path: str, body):
        return http("POST", self.url + path, body)

    def wait(self, until: str = "ready", timeout: float = 60) -> None:
        """Wait for live, then for ready (or for the start-up check to have failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                status, body = self.get("/v2/health/ready")
            except OSError:
                time.sleep(0.1)
                continue
            if (
                until == "live"
                or (until == "ready" and status == 200)
                or (until == "settled" and (status == 200 or body.get("status") == "failed"))
            ):
                return
            time.sleep(0.1)
        raise AssertionError(f"server not {until} after {timeout} s: {self.log.read_text()}")


@contextmanager
def running_server(bundle: Path, tmp_path: Path, *args: str, until: str = "ready"):
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "paritybundle.cli", "serve", str(bundle), "--port", str(port), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log)
    try:
        server.wait(until)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def torch_blocked_server(bundle: Path, tmp_path: Path):
    """`bundle serve` in a process where any `import torch` (or onnxscript) raises, ready: a server that
    becomes ready and answers there never imported torch."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    script = (
        'import sys; sys.modules["torch"] = None; sys.modules["onnxscript"] = None\n'
        "from paritybundle.cli import main\n"
        f'main(["serve", {str(bundle)!r}, "--port", "{port}"])\n'
    )
    with open(log, "w") as sink:
        process = subprocess.Popen([sys.executable, "-c", script], stdout=sink, stderr=subprocess.STDOUT)
    server = Server(process, port, log)
    try:
        server.wait("ready")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
