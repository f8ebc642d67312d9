"""The capture writer process: chunks of requests in on stdin, complete Parquet files out.

``bundle serve --capture`` starts one per server process (``python -m
paritybundle.serving.capture_files``) so that building Arrow batches and encoding Parquet never
compete with the server's event loop for its interpreter: in the server's own thread, pyarrow's
calls, which give up the GIL and take it back, cost ~10 us per request against 0.6 us alone
(docs/benchmarks.md, section 7).

Protocol on stdin: frames of an 8-byte little-endian length and a payload: first the settings as
JSON ``{"directory", "manifest_bytes" (base64), "max_file_bytes", "rotate_seconds", "max_total_bytes",
"stop_grace_seconds", "pid"}``, then one
request per frame (:func:`encode_request`: id, time, each tensor's dimensions and raw bytes). On stdout, one JSON line per event:
``{"completed": {"requests": N, "rows": M}}`` when a file is renamed into place, ``{"dropped": N}``
when requests could not be written, ``{"removed": {"files": N, "bytes": B}}`` when old files went to keep
the directory under its cap, ``{"warning": "..."}`` once when that starts. End of stdin (the server
stopped, or was killed) completes the current file and exits.

**Stopping.** The writer runs in a session of its own, so Ctrl-C in a terminal or ``kill -- -PGID``
reaches only the server, which hands over what it buffered and closes the pipe. SIGTERM, SIGINT or
SIGHUP sent to the writer itself (systemd's stop signals every process of the unit) completes the open
file at once, then the writer goes on taking what the server still sends until the pipe closes, or
until ``stop_grace_seconds`` have passed (a server that is not stopping): an orderly stop of either
process loses nothing. Only SIGKILL can: the server then counts what it sent and no file holds
(``paritybundle_capture_dropped_total{reason="writer_died"}``).

**Files.** Each file is created ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a name with 64 random bits in it,
so a link planted in the directory is never followed (the server also refuses a directory that others
can write to). A file is completed once it reaches ``max_file_bytes`` (a batch is cut by its raw size
so the file ends near the size asked; only a single request larger than that makes a larger file), and
the oldest complete files go once the directory's capture files pass ``max_total_bytes``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import secrets
import select
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..bundle.manifest import TensorSpec, parse_manifest
from ..runtime.capture import (
    FILE_GLOB,
    PARTIAL_SUFFIX,
    Captured,
    Chunk,
    chunk_batch,
    chunk_of,
    pyarrow_modules,
    schema,
)

FRAME = struct.Struct("<Q")


def send_settings(stream: BinaryIO, settings: dict[str, Any]) -> None:
    """The first frame: the writer's settings as JSON (the manifest's bytes in base64). Nothing on this
    pipe is ever unpickled or evaluated (tests/test_hostile.py holds every serving module to that)."""
    data = json.dumps({**settings, "manifest_bytes": base64.b64encode(settings["manifest_bytes"]).decode()}).encode()
    stream.write(FRAME.pack(len(data)) + data)
    stream.flush()


_HEAD = struct.Struct("<dI")  # received_at, length of the request id
_LENGTH = struct.Struct("<I")


def encode_request(specs: list[TensorSpec], arrays: list[Any], request_id: str, received_at: float) -> bytes:
    """One request as a frame's payload: its id and time, then each tensor (``arrays``, in the order of
    ``specs``: inputs, then outputs) as its dimensions and raw native bytes. Numbers cost a ``tobytes``
    each (~0.2 us for a small request, where a pickle of the same arrays took ~6 us of the server's
    event loop); strings go length-prefixed UTF-8."""
    key = request_id.encode()
    parts = [_HEAD.pack(received_at, len(key)), key]
    for spec, array in zip(specs, arrays, strict=True):
        parts.append(struct.pack(f"<{array.ndim}Q", *array.shape))
        if spec.dtype == "string":  # each value length-prefixed UTF-8, as the V2 binary extension has them
            for value in array.reshape(-1):
                encoded = str(value).encode()
                parts.append(_LENGTH.pack(len(encoded)))
                parts.append(encoded)
        else:
            parts.append(array.tobytes())
    return b"".join(parts)


def decode_request(data: bytes, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Captured:
    received_at, length = _HEAD.unpack_from(data, 0)
    offset = _HEAD.size
    request_id = data[offset : offset + length].decode()
    offset += length
    arrays: list[np.ndarray] = []
    for spec in [*inputs, *outputs]:
        ndim = len(spec.shape)
        shape = struct.unpack_from(f"<{ndim}Q", data, offset)
        offset += 8 * ndim
        if spec.dtype == "string":
            texts = []
            for _ in range(math.prod(shape)):
                (size,) = _LENGTH.unpack_from(data, offset)
                offset += _LENGTH.size
                texts.append(data[offset : offset + size].decode())
                offset += size
            values = np.empty(len(texts), dtype=object)
            values[:] = texts
            values = values.reshape(shape)
        else:
            dtype = np.dtype(spec.dtype)
            size = math.prod(shape) * dtype.itemsize
            values = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
            offset += size
        arrays.append(values)
    return Captured(
        request_id,
        received_at,
        dict(zip((s.name for s in inputs), arrays[: len(inputs)], strict=True)),
        dict(zip((s.name for s in outputs), arrays[len(inputs) :], strict=True)),
    )


def _read_exact(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd`` (fewer only at end of file). Unbuffered, so that ``select`` on the fd
    never misses a frame already read ahead into a buffer."""
    parts, left = [], size
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _receive(fd: int) -> bytes | None:
    """One frame's payload, or None at the end of input."""
    head = _read_exact(fd, FRAME.size)
    if len(head) < FRAME.size:
        return None
    (length,) = FRAME.unpack(head)
    data = _read_exact(fd, length)
    return data if len(data) == length else None


# A chunk goes to the file at this many raw bytes at most: what the writer holds decoded at once.
CHUNK_BYTES = 16 * 1024 * 1024
# Bytes a sample costs on disk beyond its tensors' raw bytes: row, time, list offsets, shapes, levels.
_ROW_OVERHEAD = 64
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def request_cost(frame: bytes, request: Captured) -> int:
    """What a request will take in a file, at most: its raw bytes, and per sample its id (written once per
    row) and the row's bookkeeping."""
    rows = len(next(iter(request.inputs.values())))
    return len(frame) + max(rows, 1) * (len(request.request_id.encode()) + _ROW_OVERHEAD)


class CaptureFiles:
    """Appends chunks to a hidden ``.partial`` Parquet file, rotated by size and age, renamed into place;
    keeps the directory's capture files under their cap, oldest removed first."""

    def __init__(self, settings: dict[str, Any], report: Any) -> None:
        self.directory = Path(settings["directory"])
        self.manifest_bytes: bytes = settings["manifest_bytes"]
        self.manifest = parse_manifest(self.manifest_bytes, source="the served bundle.json")
        self.digest = hashlib.sha256(self.manifest_bytes).hexdigest()
        self.max_file_bytes, self.rotate_seconds = settings["max_file_bytes"], settings["rotate_seconds"]
        self.max_total_bytes: int = settings["max_total_bytes"]
        self.pid = settings["pid"]
        self.schema = schema(self.manifest, self.manifest_bytes)
        self.report = report
        self.writer: Any = None
        self.sink: Any = None
        self.partial: Path | None = None
        self.opened = 0.0
        self.sequence = 0
        self.requests = self.rows = 0
        self.written = 0  # raw bytes (request_cost) in the open file
        self.warned = False

    def room(self) -> int:
        """Raw bytes the open file (or the next one) takes before it is complete."""
        return self.max_file_bytes - self.written

    def write(self, chunk: Chunk, cost: int) -> None:
        try:
            batch = chunk_batch(chunk, self.manifest, self.digest, self.schema)
            if self.writer is None:
                self._open()
            self.writer.write_batch(batch)
        except Exception as exc:  # a full or failing disk (or a bug): drop these, never stop serving
            self.report({"dropped": chunk.requests})
            if not self.warned:
                self.report({"warning": f"captured traffic is being dropped: {type(exc).__name__}: {exc}"})
                self.warned = True
            self.close()  # what the file already holds is kept when it can be completed
            return
        self.requests += chunk.requests
        self.rows += batch.num_rows
        self.written += cost
        if self.written >= self.max_file_bytes:
            self.close()

    def due(self) -> bool:
        return self.writer is not None and time.monotonic() - self.opened >= self.rotate_seconds

    def _open(self) -> None:
        _, parquet = pyarrow_modules()
        self.sequence += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        # The server's pid names the file: a file of a server that died is known as stale by the next start.
        # The random part makes the name one nobody can plant a link at in advance; O_EXCL|O_NOFOLLOW refuses
        # one anyway.
        partial = self.directory / (
            f".capture-{stamp}-{self.pid}-{self.sequence:06d}-{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
        )
        self.sink = os.fdopen(os.open(partial, _OPEN_FLAGS, 0o644), "wb")
        self.partial = partial
        # Dictionary encoding only where values repeat (the bundle's name, version, digest): tried on every
        # column it was 3.6x the cost of writing a float request (5.1 vs 1.4 us) for larger files.
        self.writer = parquet.ParquetWriter(
            self.sink, self.schema, compression="zstd", use_dictionary=["bundle", "version", "manifest_sha256"]
        )
        self.opened = time.monotonic()

    def close(self) -> None:
        writer, partial, sink = self.writer, self.partial, self.sink
        self.writer = self.partial = self.sink = None
        if partial is None or sink is None:
            return
        requests, rows = self.requests, self.rows
        self.requests = self.rows = self.written = 0
        try:
            if writer is not None:
                writer.close()
            sink.flush()
            os.fsync(sink.fileno())  # complete on disk before it is named complete
            sink.close()
            # capture-STAMP-PID-SEQ-RANDOM.parquet: complete, and sorted by when it was started.
            os.replace(partial, partial.with_name(partial.name[1:].removesuffix(".partial")))
        except Exception as exc:  # noqa: BLE001 - the disk refused the footer or the rename
            sink.close()
            self.report({"dropped": requests})
            self.report(
                {"warning": f"a capture file could not be completed, its {requests} requests are dropped: {exc}"}
            )
            partial.unlink(missing_ok=True)
            return
        # Reported when the file is complete: what the counters say is what a reader will find.
        self.report({"completed": {"requests": requests, "rows": rows}})
        self._prune()

    def _prune(self) -> None:
        """Remove the oldest complete capture files (any server's, by name: by start time) while the
        directory's capture files (the one being written included) pass ``max_total_bytes``."""
        files = []
        for path in self.directory.glob(FILE_GLOB):
            try:
                files.append((path.name, path, path.lstat().st_size))
            except OSError:
                continue  # removed meanwhile (another worker's writer)
        total = sum(size for _, _, size in files) + self.max_file_bytes  # room for the next file
        removed = freed = 0
        for _, path, size in sorted(files):
            if total <= self.max_total_bytes:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                break
            total -= size
            removed, freed = removed + 1, freed + size
        if removed:
            self.report({"removed": {"files": removed, "bytes": freed}})


class _Stop:
    """Set by SIGTERM, SIGINT or SIGHUP: complete the open file now, then stop within the grace period."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.handled = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.since is None:
            self.since = time.monotonic()


def main() -> int:
    stop = _Stop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    stdin, stdout = sys.stdin.fileno(), sys.stdout

    def report(event: dict[str, Any]) -> None:
        stdout.write(json.dumps(event) + "\n")
        stdout.flush()

    first = _receive(stdin)
    if first is None:
        return 0
    settings = json.loads(first)
    settings["manifest_bytes"] = base64.b64decode(settings["manifest_bytes"])
    files = CaptureFiles(settings, report)
    grace = float(settings["stop_grace_seconds"])
    manifest = files.manifest
    pending: list[Captured] = []
    last, elements, cost = time.monotonic(), 0, 0

    def write_pending() -> None:
        nonlocal pending, last, elements, cost
        if pending:
            files.write(chunk_of(pending, manifest), cost)
        pending, last, elements, cost = [], time.monotonic(), 0, 0

    def take(frame: bytes) -> None:
        nonlocal pending, elements, cost
        request = decode_request(frame, manifest.inputs, manifest.outputs)
        size = request_cost(frame, request)
        if (pending or files.written) and cost + size > files.room():  # this request starts the next file
            write_pending()
            files.close()
        pending.append(request)
        cost += size
        # Parquet lists here have 32-bit offsets: a chunk stays well under 2**31 values per column.
        elements += max(np.size(a) for a in (*request.inputs.values(), *request.outputs.values()))

    def receive(timeout: float) -> bool:
        """Take a frame if one comes within ``timeout``; False at the end of input (the server stopped or died)."""
        if select.select([stdin], [], [], timeout)[0]:
            frame = _receive(stdin)
            if frame is None:
                return False
            take(frame)
        return True

    while True:
        # Requests come one frame each; they are written together, every second, 4096 of them or 16 MiB,
        # and a file that has grown old while traffic is quiet is completed.
        ended = not receive(0.25)
        if stop.since is not None and not stop.handled:  # asked to stop: what came so far is made safe now,
            stop.handled = True  # the frames already in the pipe included
            while not ended and select.select([stdin], [], [], 0)[0]:
                ended = not receive(0)
            write_pending()
            files.close()
        now = time.monotonic()
        if pending and (
            ended or len(pending) >= 4096 or elements >= 1 << 26 or cost >= CHUNK_BYTES or now - last >= 1.0
        ):
            write_pending()
        if ended or (stop.since is not None and now - stop.since >= grace):
            write_pending()
            files.close()
            return 0
        if files.due():
            files.close()


if __name__ == "__main__":
    sys.exit(main())
