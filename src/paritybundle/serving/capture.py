"""``bundle serve --capture DIR``: a sampled share of requests written as Parquet, off the request path.

On the request path a sampled request is encoded onto a buffer (its arrays as raw bytes), which
goes to a writer process's pipe, non-blocking, in 64 KiB pieces (:class:`CaptureWriter`). The
writer (:mod:`.capture_files`) builds the Arrow batches, appends them to the current file and
rotates files by size and age, in its own interpreter: no Python of this server's runs for
capture beyond that encoding. A file is written under a hidden ``.partial`` name and renamed into
place once closed; when the server dies the writer sees the end of its input and completes the
file, so a killed server leaves only whole files (and a killed writer a ``.partial`` the next start
removes).

When the pipe and the buffer are full (``--capture-queue`` requests or ``--capture-queue-bytes``), or
the disk refuses a write, captures are dropped and counted (``paritybundle_capture_dropped_total{reason}``):
a request is never failed or slowed by capture. On an orderly stop (SIGINT, SIGTERM, to the server or
its process group) the server hands the writer what it buffered and the writer completes its file;
only a SIGKILLed writer loses what it held, counted as ``reason="writer_died"``. The directory must be
one only this server's user can write to (a link planted there could redirect its writes); its capture
files are kept under ``--capture-max-total-bytes``, the oldest removed first. The format is
:mod:`paritybundle.runtime.capture`'s."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import math
import os
import random
import secrets
import stat
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..bundle.manifest import Manifest
from ..errors import UsageError
from ..runtime.capture import PARTIAL_SUFFIX, pyarrow_modules
from .capture_files import FRAME, encode_request, send_settings

log = logging.getLogger("paritybundle.serve")

DEFAULT_RATE = 1.0
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_TOTAL_BYTES = 1024 * 1024 * 1024
DEFAULT_ROTATE_SECONDS = 60.0
DEFAULT_QUEUE_REQUESTS = 8192
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
# Bounds on the options, so that a typo (10**30) is refused rather than taken as "unbounded".
MAX_SIZE_OPTION = 1 << 50  # 1 PiB
MAX_QUEUE_REQUESTS = 1 << 24
MAX_ROTATE_SECONDS = 7 * 24 * 3600.0
# A request id is written once per captured row: a longer one is captured as its start and its digest.
MAX_CAPTURED_ID_CHARS = 256
# The writer process, told to stop (SIGTERM to every process of a unit), goes on taking what the server
# sends for this long: the server's own graceful stop (30 s for requests in flight) and a margin.
STOP_GRACE_SECONDS = 45.0
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
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES

    def check(self) -> None:
        """Each option within its range (NaN, infinity and absurd sizes refused), or a usage error."""
        if not (math.isfinite(self.rate) and 0.0 < self.rate <= 1.0):
            raise UsageError(f"--capture-rate must be above 0 and at most 1, got {self.rate}.")
        if not (math.isfinite(self.rotate_seconds) and 0 < self.rotate_seconds <= MAX_ROTATE_SECONDS):
            raise UsageError(
                f"--capture-rotate-seconds must be a number of seconds above 0 and at most "
                f"{MAX_ROTATE_SECONDS:.0f} (a week), got {self.rotate_seconds}."
            )
        for option, value, low, high in (
            ("--capture-max-bytes", self.max_file_bytes, 1024, MAX_SIZE_OPTION),
            ("--capture-max-total-bytes", self.max_total_bytes, 1024, MAX_SIZE_OPTION),
            ("--capture-queue", self.queue_requests, 1, MAX_QUEUE_REQUESTS),
            ("--capture-queue-bytes", self.queue_bytes, 1024, MAX_SIZE_OPTION),
        ):
            if not low <= value <= high:
                raise UsageError(f"{option} must be between {low} and {high}, got {value}.")
        if self.max_total_bytes < 2 * self.max_file_bytes:
            raise UsageError(
                f"--capture-max-total-bytes ({self.max_total_bytes}) must be at least twice "
                f"--capture-max-bytes ({self.max_file_bytes}): the file being written and the last "
                "complete one."
            )


def prepare_directory(options: CaptureOptions) -> Path:
    """Check the options and that the directory can be written, before the server binds (exit 2 otherwise);
    remove ``.partial`` files that servers killed mid-write left behind."""
    pyarrow_modules()
    options.check()
    directory = Path(options.directory)
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        _refuse_shared(directory)
        probe = directory / f".paritybundle-probe-{os.getpid()}-{secrets.token_hex(8)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"cannot write captured traffic to {directory} ({exc.strerror or exc}); pass a directory "
            "this server can create files in."
        ) from None
    for stale in directory.glob(f".capture-*{PARTIAL_SUFFIX}"):
        pid = stale.name.split("-")[2] if stale.name.count("-") >= 3 else ""
        if not pid.isdigit() or not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    return directory


def _refuse_shared(directory: Path) -> None:
    """Refuse a directory another user can write to: whoever can plant a link in it could redirect what the
    server writes (its files are opened O_NOFOLLOW|O_EXCL under random names, but the directory is where
    the rows live, and another user could also remove or replace them)."""
    info = directory.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"--capture {directory} is not a directory; pass a directory for the capture files.")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid != os.geteuid():
        who = (
            "other users"
            if info.st_mode & stat.S_IWOTH
            else "its group"
            if info.st_mode & stat.S_IWGRP
            else f"its owner (uid {info.st_uid}), who is not this server's user"
        )
        raise UsageError(
            f"the capture directory {directory} can be written by {who} (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): a link planted there could redirect what the server "
            "writes. Pass a directory only this server's user owns and can write to (chmod go-w)."
        )


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
        self.rows = Counter(
            "paritybundle_captured_rows", "Samples in completed captured traffic files.", registry=registry
        )
        self.requests = Counter(
            "paritybundle_captured_requests", "Requests in completed captured traffic files.", registry=registry
        )
        self.dropped = Counter(
            "paritybundle_capture_dropped", "Sampled requests not captured, by reason.", ["reason"], registry=registry
        )
        self.queued = Gauge("paritybundle_capture_queue", "Requests waiting to be written.", registry=registry)
        self.queued_bytes = Gauge(
            "paritybundle_capture_queue_bytes", "Bytes of requests waiting to be written.", registry=registry
        )
        self.files = Counter("paritybundle_capture_files", "Capture files completed.", registry=registry)
        self.removed_files = Counter(
            "paritybundle_capture_removed_files",
            "Oldest capture files removed to keep the directory under its cap.",
            registry=registry,
        )
        self.removed_bytes = Counter(
            "paritybundle_capture_removed_bytes",
            "Bytes of capture files removed to keep the directory under its cap.",
            registry=registry,
        )
        self.queue_full = self.dropped.labels("queue_full")
        self.write_error = self.dropped.labels("write_error")
        self.writer_died = self.dropped.labels("writer_died")


class CaptureWriter:
    """Samples requests and pipes each, encoded as raw bytes, to a writer process (see the module doc).

    Everything here runs on the event loop, and briefly: a sampled request is encoded onto a
    buffer (its arrays as raw bytes), and the buffer goes to the writer's pipe, non-blocking,
    once it holds 64 KiB or a quarter of a second after the first request in it. No thread of this
    interpreter runs Python for capture (a thread doing the conversion here held the GIL against
    the event loop: docs/benchmarks.md, section 7). A full pipe leaves requests in the buffer; past
    ``queue_requests`` of them, captures are dropped and counted; requests never wait.
    """

    def __init__(
        self, options: CaptureOptions, manifest: Manifest, manifest_bytes: bytes, registry: CollectorRegistry
    ) -> None:
        self.options, self.manifest, self.manifest_bytes = options, manifest, manifest_bytes
        self.directory = Path(options.directory)
        self.metrics = CaptureMetrics(registry)
        self._specs = [*manifest.inputs, *manifest.outputs]
        self._inputs, self._outputs = [s.name for s in manifest.inputs], [s.name for s in manifest.outputs]
        self._buffer = bytearray()
        self._frames: collections.deque[int] = collections.deque()  # sizes of the frames still buffered
        self._limit, self._limit_bytes = options.queue_requests, options.queue_bytes
        self._sent = 0  # requests whose frame went whole into the pipe
        self._accounted = 0  # of those, in a completed file or reported dropped by the writer
        self._random = random.Random()
        self._reader = threading.Thread(target=self._read_reports, name="paritybundle-capture-reports", daemon=True)
        self._process: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._flush_scheduled = False
        self._made_ids = 0
        self._id_prefix = secrets.token_hex(4)
        self._warned = False

    def start(self) -> None:
        # A session of its own: Ctrl-C in a terminal and `kill -- -PGID` reach the server only, which then
        # hands over what it buffered and closes the pipe (the writer completing its file). Before this, the
        # writer died with the server's process group and took every buffered row with it.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "paritybundle.serving.capture_files"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._process.stdin is not None
        send_settings(
            cast(BinaryIO, self._process.stdin),
            {
                "directory": str(self.directory),
                "manifest_bytes": self.manifest_bytes,
                "max_file_bytes": self.options.max_file_bytes,
                "max_total_bytes": self.options.max_total_bytes,
                "rotate_seconds": self.options.rotate_seconds,
                "stop_grace_seconds": STOP_GRACE_SECONDS,
                "pid": os.getpid(),
            },
        )
        self._fd = self._process.stdin.fileno()
        try:  # a larger pipe absorbs bursts while the writer encodes (Linux; the default is 64 KiB)
            import fcntl

            fcntl.fcntl(self._fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass
        os.set_blocking(self._fd, False)
        self._reader.start()

    def submit(
        self,
        request_id: str | None,
        received_at: float,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Called on the request path (the event loop): sample, then buffer or drop. Never blocks."""
        if self.options.rate < 1.0 and self._random.random() >= self.options.rate:
            return
        arrays = [*(inputs[n] for n in self._inputs), *(outputs[n] for n in self._outputs)]
        if (
            len(self._frames) >= self._limit
            or self._fd < 0
            or len(self._buffer) + sum(a.nbytes for a in arrays if a.dtype != object) > self._limit_bytes
        ):
            self.metrics.queue_full.inc()
            return
        if request_id is None:
            self._made_ids += 1
            request_id = f"{self._id_prefix}-{self._made_ids:010d}"
        elif len(request_id) > MAX_CAPTURED_ID_CHARS:  # written once per row: its start, and its digest
            request_id = (
                request_id[:128]
                + "...sha256:"
                + hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()
            )
        data = encode_request(self._specs, arrays, request_id, received_at)
        if len(self._buffer) + FRAME.size + len(data) > self._limit_bytes:  # strings counted now
            self.metrics.queue_full.inc()
            return
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
        self._handed_over(written)
        self.metrics.queued.set(len(self._frames))
        self.metrics.queued_bytes.set(len(self._buffer))

    def _handed_over(self, written: int) -> None:
        """``written`` bytes of the buffer went into the pipe: drop them, and count the frames now whole there."""
        del self._buffer[:written]
        while self._frames and written >= self._frames[0]:
            written -= self._frames.popleft()
            self._sent += 1
        if self._frames:
            self._frames[0] -= written

    def stop(self, timeout: float = 30.0) -> None:
        """Hand over what is buffered; the writer completes its file and exits."""
        process = self._process
        if process is None or process.stdin is None:
            return
        if self._fd >= 0:
            try:
                os.set_blocking(self._fd, True)
                while self._buffer:  # a blocking write may still return short (a signal): loop
                    self._handed_over(os.write(self._fd, self._buffer))
            except OSError:  # the writer is gone: what it was not given is lost, and counted
                self.metrics.write_error.inc(len(self._frames))
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
                self._accounted += event["completed"]["requests"]
            elif "dropped" in event:
                self.metrics.write_error.inc(event["dropped"])
                self._accounted += event["dropped"]
            elif "removed" in event:
                self.metrics.removed_files.inc(event["removed"]["files"])
                self.metrics.removed_bytes.inc(event["removed"]["bytes"])
            elif "warning" in event:
                self._warn(str(event["warning"]))
        # The writer's output ended: it exited. Requests it was given that no file holds (it was SIGKILLed,
        # or stopped alone past its grace) are lost: counted, and said once.
        process.wait()
        lost = self._sent - self._accounted
        if lost > 0:
            self.metrics.writer_died.inc(lost)
            self._accounted += lost
            self._warn(
                f"the capture writer process ended (exit {process.returncode}) holding {lost} requests "
                "that no file has; they are lost"
            )
