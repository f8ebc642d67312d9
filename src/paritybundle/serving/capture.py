"""``bundle serve --capture DIR``: a sampled share of requests written as Parquet, off the request path.

The request path only samples and puts a reference to the request's arrays on a bounded queue
(a few microseconds); a background thread turns queued requests into Arrow record batches
(concatenated arrays, no per-value Python), appends them to the current file, and rotates files
by size and age. A file is written under a hidden ``.partial`` name and renamed into place once
closed, so a killed server leaves only whole files (and a ``.partial`` the next start removes).

When the queue is full, or the disk refuses a write, captures are dropped and counted
(``paritybundle_capture_dropped_total{reason}``): a request is never failed or slowed by capture.
The format is :mod:`paritybundle.runtime.capture`'s.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..bundle.manifest import Manifest
from ..errors import UsageError
from ..runtime.capture import PARTIAL_SUFFIX, Captured, pyarrow_modules, record_batch, schema

log = logging.getLogger("paritybundle.serve")

DEFAULT_RATE = 1.0
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_ROTATE_SECONDS = 60.0
DEFAULT_QUEUE_REQUESTS = 8192
# Queued requests are written together: fewer, larger Arrow batches cost less per request.
_WRITE_EVERY_REQUESTS = 4096
_WRITE_EVERY_SECONDS = 0.25
_WRITE_EVERY_ELEMENTS = 1 << 26


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
    """Samples requests onto a bounded queue; a daemon thread writes them (see the module doc).

    The queue is a deque the request path appends to (atomic under the GIL: no lock, and no
    wake-up of the writer per request, as a ``queue.Queue`` consumer would have) and the writer
    drains every ``_WRITE_EVERY_SECONDS``.
    """

    def __init__(self, options: CaptureOptions, manifest: Manifest, manifest_bytes: bytes,
                 registry: CollectorRegistry) -> None:
        self.options, self.manifest = options, manifest
        self.digest = hashlib.sha256(manifest_bytes).hexdigest()
        self.directory = Path(options.directory)
        self.metrics = CaptureMetrics(registry)
        self._pending: collections.deque[tuple[str | None, float, Mapping[str, np.ndarray], Mapping[str, np.ndarray]]] \
            = collections.deque()
        self._limit = options.queue_requests
        self._stopping = threading.Event()
        self._schema = schema(manifest, manifest_bytes)
        self._random = random.Random()
        self._thread = threading.Thread(target=self._loop, name="paritybundle-capture", daemon=True)
        self._writer: Any = None
        self._partial: Path | None = None
        self._opened = 0.0
        self._sequence = 0
        self._made_ids = 0
        self._id_prefix = secrets.token_hex(4)
        self._file_requests = self._file_rows = 0
        self._warned = False
        specs = [*manifest.inputs, *manifest.outputs]
        fixed = all(isinstance(d, int) for spec in specs for d in spec.shape[1:])
        # Rows per request are at most --max-request-batch (1024 by default): the bound per request is generous.
        self._fixed_size = 1024 * max(math.prod(spec.shape[1:]) for spec in specs) if fixed else None

    def start(self) -> None:
        self._thread.start()

    def submit(self, request_id: str | None, received_at: float, inputs: Mapping[str, np.ndarray],
               outputs: Mapping[str, np.ndarray]) -> None:
        """Called on the request path: sample, then queue or drop. Never blocks, never raises."""
        if self.options.rate < 1.0 and self._random.random() >= self.options.rate:
            return
        if len(self._pending) >= self._limit:
            self.metrics.queue_full.inc()
            return
        self._pending.append((request_id, received_at, inputs, outputs))

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued, close the current file and rename it into place."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the writer thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            stopping = self._stopping.wait(_WRITE_EVERY_SECONDS)
            self._drain()
            now = time.monotonic()
            if self._writer is not None and (stopping or now - self._opened >= self.options.rotate_seconds):
                self._close()
            if stopping:
                return

    def _drain(self) -> None:
        pending = self._pending
        while pending:
            # Taken in chunks (popleft is atomic; the request path keeps appending meanwhile). Parquet
            # lists here have 32-bit offsets: a chunk stays well under 2**31 values per column.
            count = min(len(pending), _WRITE_EVERY_REQUESTS, max(1, _WRITE_EVERY_ELEMENTS // self._per_request_bound()))
            chunk = [pending.popleft() for _ in range(count)]
            self._write([Captured(request_id or self._make_id(), received_at, inputs, outputs)
                         for request_id, received_at, inputs, outputs in chunk])
        self.metrics.queued.set(len(pending))

    def _make_id(self) -> str:
        """A request id made here, off the request path: unique per server process."""
        self._made_ids += 1
        return f"{self._id_prefix}-{self._made_ids:010d}"

    def _per_request_bound(self) -> int:
        """Values one request may put in a column: exact for fixed shapes (the spec's), else the body limit's."""
        return self._fixed_size or (1 << 22)

    def _write(self, requests: list[Captured]) -> None:
        try:
            batch = record_batch(requests, self.manifest, self.digest, self._schema)
            if self._writer is None:
                self._open()
            self._writer.write_batch(batch)
        except Exception as exc:  # a full or failing disk (or a bug): drop these, never stop serving
            self.metrics.write_error.inc(len(requests))
            if not self._warned:
                log.warning("captured traffic is being dropped: %s: %s (counted in "
                            "paritybundle_capture_dropped_total)", type(exc).__name__, exc)
                self._warned = True
            self._close()  # what the file already holds is kept when it can be completed
            return
        self._file_requests += len(requests)
        self._file_rows += batch.num_rows
        if self._partial is not None and self._partial.stat().st_size >= self.options.max_file_bytes:
            self._close()

    def _open(self) -> None:
        _, parquet = pyarrow_modules()
        self._sequence += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._partial = self.directory / f".capture-{stamp}-{os.getpid()}-{self._sequence:06d}{PARTIAL_SUFFIX}"
        # Dictionary encoding only where values repeat (the bundle's name, version, digest): tried on every
        # column it was 3.6x the cost of writing a float request (5.1 vs 1.4 us) for larger files.
        self._writer = parquet.ParquetWriter(self._partial, self._schema, compression="zstd",
                                             use_dictionary=["bundle", "version", "manifest_sha256"])
        self._opened = time.monotonic()

    def _close(self) -> None:
        writer, partial = self._writer, self._partial
        self._writer = self._partial = None
        if writer is None or partial is None:
            return
        requests, rows = self._file_requests, self._file_rows
        self._file_requests = self._file_rows = 0
        try:
            writer.close()
            # capture-STAMP-PID-SEQ.parquet: complete, and sorted by when it was started.
            os.replace(partial, partial.with_name(partial.name[1:].removesuffix(".partial")))
        except Exception as exc:  # noqa: BLE001 - the disk refused the footer or the rename
            log.warning("a capture file could not be completed, its %d requests are dropped: %s", requests, exc)
            self.metrics.write_error.inc(requests)
            partial.unlink(missing_ok=True)
            return
        # Counted when the file is complete: what the counters say is what a reader will find.
        self.metrics.files.inc()
        self.metrics.requests.inc(requests)
        self.metrics.rows.inc(rows)
