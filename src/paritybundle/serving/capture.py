"""``bundle serve --capture DIR``: a sampled share of requests written as Parquet, off the request path.

On the request path a sampled request is encoded onto a buffer (its arrays as raw bytes), which
goes to a writer process's pipe, non-blocking, in 64 KiB pieces (:class:`CaptureWriter`). The
writer (:mod:`.capture_files`) builds the Arrow batches, appends them to the current file and
rotates files by size and age, in its own interpreter: no Python of this server's runs for
capture beyond that encoding. A file is written under a hidden ``.partial`` name and renamed into
place once closed; when the server dies the writer sees the end of its input and completes the
file, so a killed server leaves only whole files (and a killed writer a ``.partial`` the next start
removes).

When the pipe and the buffer are full, or the disk refuses a write, captures are dropped and
counted (``paritybundle_capture_dropped_total{reason}``): a request is never failed or slowed by
capture. The format is :mod:`paritybundle.runtime.capture`'s."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import secrets
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..bundle.manifest import Manifest
from ..errors import UsageError
from ..runtime.capture import PARTIAL_SUFFIX, pyarrow_modules
from .capture_files import FRAME, encode_request, send_settings

log = logging.getLogger("paritybundle.serve")

DEFAULT_RATE = 1.0
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_ROTATE_SECONDS = 60.0
DEFAULT_QUEUE_REQUESTS = 8192
# The buffer of encoded requests goes to the writer's pipe at this size, or this long after its first.
_FLUSH_BYTES = 64 * 1024
_FLUSH_SECONDS = 0.25


@dataclass(frozen=True)
class CaptureOptions:
    directory: str
    rate: float = DEFAULT_RATE
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    rotate_seconds: float = DEFAULT_ROTATE_SECONDS
    queue_requests: int = DEFAULT_QUEUE_REQUESTS


def prepare_directory(options: CaptureOptions) -> Path:
    """Check the options and that the directory can be written, before the server binds (exit 2 otherwise);
    remove ``.partial`` files that servers killed mid-write left behind."""
    pyarrow_modules()
    if not 0.0 < options.rate <= 1.0:
        raise UsageError(f"--capture-rate must be above 0 and at most 1, got {options.rate}.")
    if options.max_file_bytes < 1024 or options.rotate_seconds <= 0 or options.queue_requests < 1:
        raise UsageError("--capture-max-bytes must be at least 1024, and the rotation and queue sizes positive.")
    directory = Path(options.directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".paritybundle-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write captured traffic to {directory} ({exc.strerror or exc}); pass a directory "
                         "this server can create files in.") from None
    for stale in directory.glob(f".capture-*{PARTIAL_SUFFIX}"):
        pid = stale.name.split("-")[2] if stale.name.count("-") >= 3 else ""
        if not pid.isdigit() or not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    return directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CaptureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter("paritybundle_captured_rows", "Samples in completed captured traffic files.",
                            registry=registry)
        self.requests = Counter("paritybundle_captured_requests", "Requests in completed captured traffic files.",
                                registry=registry)
        self.dropped = Counter("paritybundle_capture_dropped", "Sampled requests not captured, by reason.",
                               ["reason"], registry=registry)
        self.queued = Gauge("paritybundle_capture_queue", "Requests waiting to be written.", registry=registry)
        self.files = Counter("paritybundle_capture_files", "Capture files completed.", registry=registry)
        self.queue_full = self.dropped.labels("queue_full")
        self.write_error = self.dropped.labels("write_error")


class CaptureWriter:
    """Samples requests and pipes each, encoded as raw bytes, to a writer process (see the module doc).

    Everything here runs on the event loop, and briefly: a sampled request is encoded onto a
    buffer (its arrays as raw bytes), and the buffer goes to the writer's pipe, non-blocking,
    once it holds 64 KiB or a quarter of a second after the first request in it. No thread of this
    interpreter runs Python for capture (a thread doing the conversion here held the GIL against
    the event loop: docs/benchmarks.md, section 7). A full pipe leaves requests in the buffer; past
    ``queue_requests`` of them, captures are dropped and counted; requests never wait.
    """

    def __init__(self, options: CaptureOptions, manifest: Manifest, manifest_bytes: bytes,
                 registry: CollectorRegistry) -> None:
        self.options, self.manifest, self.manifest_bytes = options, manifest, manifest_bytes
        self.directory = Path(options.directory)
        self.metrics = CaptureMetrics(registry)
        self._specs = [*manifest.inputs, *manifest.outputs]
        self._inputs, self._outputs = [s.name for s in manifest.inputs], [s.name for s in manifest.outputs]
        self._buffer = bytearray()
        self._frames: collections.deque[int] = collections.deque()  # sizes of the frames still buffered
        self._limit = options.queue_requests
        self._random = random.Random()
        self._reader = threading.Thread(target=self._read_reports, name="paritybundle-capture-reports", daemon=True)
        self._process: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._flush_scheduled = False
        self._made_ids = 0
        self._id_prefix = secrets.token_hex(4)
        self._warned = False

    def start(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", "paritybundle.serving.capture_files"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._process.stdin is not None
        send_settings(self._process.stdin, {"directory": str(self.directory), "manifest_bytes": self.manifest_bytes,
                                   "max_file_bytes": self.options.max_file_bytes,
                                   "rotate_seconds": self.options.rotate_seconds, "pid": os.getpid()})
        self._fd = self._process.stdin.fileno()
        try:  # a larger pipe absorbs bursts while the writer encodes (Linux; the default is 64 KiB)
            import fcntl

            fcntl.fcntl(self._fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass
        os.set_blocking(self._fd, False)
        self._reader.start()

    def submit(self, request_id: str | None, received_at: float, inputs: Mapping[str, np.ndarray],
               outputs: Mapping[str, np.ndarray]) -> None:
        """Called on the request path (the event loop): sample, then buffer or drop. Never blocks."""
        if self.options.rate < 1.0 and self._random.random() >= self.options.rate:
            return
        if len(self._frames) >= self._limit or self._fd < 0:
            self.metrics.queue_full.inc()
            return
        if request_id is None:
            self._made_ids += 1
            request_id = f"{self._id_prefix}-{self._made_ids:010d}"
        data = encode_request(self._specs, [*(inputs[n] for n in self._inputs), *(outputs[n] for n in self._outputs)],
                              request_id, received_at)
        self._buffer += FRAME.pack(len(data))
        self._buffer += data
        self._frames.append(FRAME.size + len(data))
        if len(self._buffer) >= _FLUSH_BYTES:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_later(_FLUSH_SECONDS, self._scheduled_flush)
            except RuntimeError:  # not on an event loop (a test calling directly): flush now
                self._flush_scheduled = False
                self._flush()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()
        if self._buffer and not self._flush_scheduled:  # the pipe was full: try again shortly
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(_FLUSH_SECONDS, self._scheduled_flush)

    def _flush(self) -> None:
        """As much of the buffer as the pipe takes now; what it does not stays for the next flush."""
        if not self._buffer or self._fd < 0:
            return
        try:
            written = os.write(self._fd, self._buffer)
        except BlockingIOError:
            return
        except OSError as exc:  # the writer process died: what is buffered is lost, and counted
            self.metrics.write_error.inc(len(self._frames))
            self._buffer.clear()
            self._frames.clear()
            self._warn(f"captured traffic is being dropped: the writer process is gone ({exc})")
            self._fd = -1
            return
        del self._buffer[:written]
        while self._frames and written >= self._frames[0]:
            written -= self._frames.popleft()
        if self._frames:
            self._frames[0] -= written
        self.metrics.queued.set(len(self._frames))

    def stop(self, timeout: float = 30.0) -> None:
        """Hand over what is buffered; the writer completes its file and exits."""
        process = self._process
        if process is None or process.stdin is None:
            return
        if self._fd >= 0:
            try:
                os.set_blocking(self._fd, True)
                while self._buffer:  # a blocking write may still return short (a signal): loop
                    del self._buffer[:os.write(self._fd, self._buffer)]
            except OSError:
                pass
            self._buffer.clear()
            self._frames.clear()
        try:
            process.stdin.close()  # end of input: the writer completes its file
        except OSError:
            pass
        self._fd = -1
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader.is_alive():
            self._reader.join(timeout)

    def _warn(self, message: str) -> None:
        if not self._warned:
            log.warning("%s (counted in paritybundle_capture_dropped_total)", message)
            self._warned = True

    def _read_reports(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "completed" in event:
                self.metrics.files.inc()
                self.metrics.requests.inc(event["completed"]["requests"])
                self.metrics.rows.inc(event["completed"]["rows"])
            elif "dropped" in event:
                self.metrics.write_error.inc(event["dropped"])
            elif "warning" in event:
                self._warn(str(event["warning"]))
