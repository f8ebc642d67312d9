"""Captured production traffic: what a server received and answered, as Parquet files.

``bundle serve --capture DIR`` writes them (:mod:`paritybundle.serving.capture`); ``bundle check
--references DIR``, ``bundle drift``, ``bundle replay`` and ``bundle export --references-from`` read
them here. Parquet is the interchange format pandas, Ray Data and Spark read without help.

One Parquet row per *sample* (a request of batch 3 is three rows):

==========================  ====================  =================================================
column                      type                  holds
==========================  ====================  =================================================
``request_id``              string                the request's V2 ``id``, or one the server made
``row``                     int32                 the sample's row within its request
``received_at``             timestamp (us, UTC)   when the server received the request
``bundle``, ``version``     string                the bundle served
``manifest_sha256``         string                the digest of its ``bundle.json``
``input.NAME``              list<T>               the sample's raw input, row-major, as decoded
``input.NAME.shape``        list<int32>           its shape without the batch axis
``output.NAME``             list<T>               what the server answered
``output.NAME.shape``       list<int32>           its shape without the batch axis
==========================  ====================  =================================================

Complete files are named ``capture-*.parquet``; a file being written is hidden
(``.capture-*.parquet.partial``) and renamed into place only when complete, so a reader (and a
server killed mid-write) only ever sees whole files. pyarrow is the ``capture`` extra: nothing
here imports it until traffic is written or read.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import MAX_DIMENSION, Manifest, TensorSpec
from ..errors import UsageError

FORMAT_VERSION = "1"
FILE_GLOB = "capture-*.parquet"
PARTIAL_SUFFIX = ".parquet.partial"
INSTALL_HINT = "reading or writing captured traffic needs pyarrow: pip install 'paritybundle[capture]'."
_ARROW_TYPES = {
    "float16": "float16",
    "float32": "float32",
    "float64": "float64",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool_",
    "string": "string",
}


def pyarrow_modules() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or a usage error saying how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet as parquet
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return pyarrow, parquet


def column(kind: str, name: str) -> str:
    """The column of input or output ``name`` (``kind``: ``"input"`` or ``"output"``)."""
    return f"{kind}.{name}"


def schema(manifest: Manifest, manifest_bytes: bytes) -> Any:
    """The Arrow schema of a capture of ``manifest``'s bundle; the file's metadata keeps the bundle's
    ``bundle.json`` itself (``replay`` judges under its policy when no bundle is given)."""
    pa, _ = pyarrow_modules()
    fields = [
        pa.field("request_id", pa.string()),
        pa.field("row", pa.int32()),
        pa.field("received_at", pa.timestamp("us", tz="UTC")),
        pa.field("bundle", pa.string()),
        pa.field("version", pa.string()),
        pa.field("manifest_sha256", pa.string()),
    ]
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            fields.append(pa.field(column(kind, spec.name), pa.list_(getattr(pa, _ARROW_TYPES[spec.dtype])())))
            fields.append(pa.field(column(kind, spec.name) + ".shape", pa.list_(pa.int32())))
    return pa.schema(
        fields,
        metadata={
            "paritybundle.capture": FORMAT_VERSION,
            "paritybundle.manifest": manifest_bytes,
            "paritybundle.manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        },
    )


def embedded_manifest(file: Path) -> tuple[bytes, str]:
    """``(bundle.json bytes, their sha256)`` as the server recorded them in a capture file."""
    _, parquet = pyarrow_modules()
    try:
        metadata = parquet.read_schema(file).metadata or {}
    except Exception as exc:  # pyarrow's own errors: a truncated or foreign file
        raise UsageError(f"{file} is not a readable capture file ({type(exc).__name__}).") from None
    raw = metadata.get(b"paritybundle.manifest")
    if raw is None:
        raise UsageError(f"{file} records no bundle manifest; it was not written by `bundle serve --capture`.")
    return raw, hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Captured:
    """One request as served: its id, when it came (seconds since the epoch), its inputs and outputs
    (each ``[batch, ...]``, the same batch)."""

    request_id: str
    received_at: float
    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Chunk:
    """Requests gathered for writing, numpy only (it crosses to the writer process pickled): per sample
    the request id and time, and per column (``input.NAME``, ``output.NAME``) the requests' arrays,
    stacked into one ``[samples, ...]`` array when every sample has the spec's fixed shape."""

    ids: np.ndarray  # per request
    stamps: np.ndarray  # per request, microseconds since the epoch
    rows: np.ndarray  # per request
    tensors: dict[str, np.ndarray | list[np.ndarray]]

    @property
    def requests(self) -> int:
        return int(self.rows.size)

    @property
    def samples(self) -> int:
        return int(self.rows.sum())


def chunk_of(records: Sequence[Captured], manifest: Manifest) -> Chunk:
    """Requests as a :class:`Chunk`: one concatenation per column where shapes are fixed (the common case)."""
    first = manifest.inputs[0].name
    rows = np.fromiter((len(r.inputs[first]) for r in records), dtype=np.int64, count=len(records))
    tensors: dict[str, np.ndarray | list[np.ndarray]] = {}
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            arrays = [(r.inputs if kind == "input" else r.outputs)[spec.name] for r in records]
            fixed = all(isinstance(d, int) for d in spec.shape[1:])
            tensors[column(kind, spec.name)] = (
                np.concatenate(arrays, axis=0)
                if fixed and len(arrays) > 1
                else np.asarray(arrays[0])
                if fixed
                else arrays
            )
    return Chunk(
        ids=np.array([r.request_id for r in records], dtype=object),
        stamps=np.fromiter((int(r.received_at * 1e6) for r in records), dtype=np.int64, count=len(records)),
        rows=rows,
        tensors=tensors,
    )


def chunk_batch(chunk: Chunk, manifest: Manifest, digest: str, arrow_schema: Any) -> Any:
    """A :class:`Chunk` as one Arrow record batch, a row per sample."""
    pa, _ = pyarrow_modules()
    rows, total = chunk.rows, chunk.samples
    single = total == chunk.requests  # every request one row
    columns: list[Any] = [
        pa.array(chunk.ids if single else np.repeat(chunk.ids, rows), pa.string()),
        pa.array(
            np.zeros(total, np.int32)
            if single
            else np.concatenate([np.arange(n, dtype=np.int32) for n in rows])
            if total
            else np.zeros(0, np.int32)
        ),
        pa.array(chunk.stamps if single else np.repeat(chunk.stamps, rows), pa.timestamp("us", tz="UTC")),
        pa.array([manifest.name] * total, pa.string()),
        pa.array([manifest.version] * total, pa.string()),
        pa.array([digest] * total, pa.string()),
    ]
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            columns.extend(_list_columns(pa, chunk.tensors[column(kind, spec.name)], spec, rows, total))
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema)


def _list_columns(
    pa: Any, arrays: np.ndarray | list[np.ndarray], spec: TensorSpec, rows: np.ndarray, total: int
) -> list[Any]:
    """``(values, shape)`` list columns for one tensor: a stacked ``[samples, ...]`` array, or the
    requests' arrays when their shapes vary."""
    rank = len(spec.shape) - 1
    if isinstance(arrays, np.ndarray):  # stacked: one shape for every sample, no loop
        shape = arrays.shape[1:]
        flat_values = arrays.reshape(-1)
        offsets = np.arange(total + 1, dtype=np.int64) * math.prod(shape)
        shape_values = np.tile(np.asarray(shape, dtype=np.int32), total) if rank else np.zeros(0, np.int32)
    else:
        flat_values = np.concatenate([np.asarray(a).reshape(-1) for a in arrays])
        per_row = np.fromiter((math.prod(a.shape[1:]) for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.zeros(total + 1, dtype=np.int64)
        np.cumsum(np.repeat(per_row, rows), out=offsets[1:])
        shape_values = (
            np.concatenate(
                [np.tile(np.asarray(a.shape[1:], dtype=np.int32), int(n)) for a, n in zip(arrays, rows, strict=True)]
            )
            if rank
            else np.zeros(0, np.int32)
        )
    arrow_type = getattr(pa, _ARROW_TYPES[spec.dtype])()
    if spec.dtype == "string":
        flat = pa.array([str(v) for v in flat_values], arrow_type)
    else:
        flat = pa.array(flat_values, arrow_type)
    values = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)
    shape_lists = pa.ListArray.from_arrays(
        pa.array(np.arange(total + 1, dtype=np.int32) * rank), pa.array(shape_values, pa.int32())
    )
    return [values, shape_lists]


# --- reading -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureGroup:
    """Captured samples that share every input's and output's shape, stacked ``[samples, ...]``.
    ``positions``: each sample's position in the whole capture (its order of arrival)."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    positions: np.ndarray


@dataclass(frozen=True)
class CaptureData:
    """A capture read back: samples in groups of one shape, and who sent each sample."""

    files: list[Path]
    groups: list[CaptureGroup]
    request_ids: np.ndarray  # per sample, in arrival order
    rows: np.ndarray  # each sample's row within its request
    digests: list[str]  # the manifests whose servers wrote it

    @property
    def order(self) -> np.ndarray:
        """The capture position of each sample as the groups number them (group after group)."""
        return np.concatenate([g.positions for g in self.groups]) if self.groups else np.zeros(0, np.int64)

    @property
    def samples(self) -> int:
        return int(self.request_ids.size)

    def request_of(self, position: int) -> str:
        """``request_id`` (and the row, for a request of several) of the sample at ``position``."""
        row = int(self.rows[position])
        return str(self.request_ids[position]) + (f"[{row}]" if row else "")


def capture_files(path: str | os.PathLike[str]) -> list[Path]:
    """The complete capture files of a directory (or one file), oldest first by name."""
    root = Path(path)
    if root.is_file() and root.name.endswith(".parquet"):
        return [root]
    files = sorted(root.glob(FILE_GLOB)) if root.is_dir() else []
    if not files:
        raise UsageError(
            f"{root} holds no captured traffic ({FILE_GLOB}); pass the directory given to `bundle serve --capture`."
        )
    return files


def is_capture(path: str | os.PathLike[str]) -> bool:
    root = Path(path)
    return (root.is_file() and root.name.endswith(".parquet")) or (root.is_dir() and any(root.glob(FILE_GLOB)))


def read_capture(path: str | os.PathLike[str], manifest: Manifest, *, outputs: bool = True) -> CaptureData:
    """Read a capture of ``manifest``'s bundle (its inputs, and its outputs unless ``outputs`` is false).

    Raises:
        UsageError: no capture there, pyarrow missing, or a capture of a bundle with other inputs or
            outputs (named).
    """
    pa, parquet = pyarrow_modules()
    files = capture_files(path)
    tables = []
    for file in files:
        try:
            tables.append(parquet.read_table(file))
        except Exception as exc:  # pyarrow's own errors: a truncated or foreign file
            raise UsageError(
                f"{file} is not a readable capture file ({type(exc).__name__}: {str(exc)[:200]})."
            ) from None
    try:
        table = pa.concat_tables(tables, promote_options="none") if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid:
        raise UsageError(
            f"the capture files in {path} hold different columns: they come from servers of different "
            "bundles; pass one bundle's capture."
        ) from None
    kinds = [("input", manifest.inputs)] + ([("output", manifest.outputs)] if outputs else [])
    for name, wanted_type in (("request_id", pa.string()), ("row", pa.int32()), ("manifest_sha256", pa.string())):
        if name not in table.column_names or table.schema.field(name).type != wanted_type:
            raise UsageError(
                f"the capture in {path} has no {wanted_type} column {name!r}: it was not written by "
                "`bundle serve --capture`, or was altered."
            )
        if table[name].null_count:
            raise UsageError(
                f"the capture in {path} has {table[name].null_count} rows without a {name!r}: it was "
                "altered; every captured sample names its request."
            )
    for kind, specs in kinds:
        for spec in specs:
            for name in (column(kind, spec.name), column(kind, spec.name) + ".shape"):
                if name not in table.column_names:
                    raise UsageError(
                        f"the capture in {path} has no column {name!r}: it was served by a bundle with "
                        f"other {kind}s than {manifest.name!r}."
                    )
    for kind, specs in kinds:
        for spec in specs:
            wanted = pa.list_(getattr(pa, _ARROW_TYPES[spec.dtype])())
            for name, expected in (
                (column(kind, spec.name), wanted),
                (column(kind, spec.name) + ".shape", pa.list_(pa.int32())),
            ):
                found = table.schema.field(name).type
                if found != expected:
                    what = str(getattr(found, "value_type", found))
                    raise UsageError(
                        f"the capture in {path} holds {name!r} as lists of {what}, not of "
                        f"{expected.value_type}: it was not written by `bundle serve --capture` for "
                        f"{manifest.name!r}."
                    )
    samples = table.num_rows
    shapes = {
        (kind, spec.name): _shapes(table[column(kind, spec.name) + ".shape"], len(spec.shape) - 1, samples)
        for kind, specs in kinds
        for spec in specs
    }
    key = np.concatenate(list(shapes.values()), axis=1) if shapes else np.zeros((samples, 0), np.int64)
    for spec in manifest.inputs:
        sizes = shapes[("input", spec.name)].prod(axis=1) if shapes[("input", spec.name)].shape[1] else None
        if sizes is not None and (sizes == 0).any():
            empty = int((sizes == 0).sum())
            raise UsageError(
                f"the capture in {path} holds {empty} sample(s) whose input {spec.name!r} has no values "
                f"(a dimension of 0, first at sample {int(np.flatnonzero(sizes == 0)[0])}); such a sample "
                "proves nothing about the model. Remove them, or capture traffic that carries values."
            )
    groups = []
    if samples:
        if key.shape[1]:
            unique, inverse = np.unique(key, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
        else:  # every tensor is one value per sample: one group
            unique, inverse = np.zeros((1, 0)), np.zeros(samples, np.int64)
        # Each group's positions from one stable sort (a scan per group was quadratic: 100,000 shapes took 53 s),
        # and each column combined once, its groups taken from it.
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
        columns = {
            (kind, spec.name): _ListColumn(table[column(kind, spec.name)], spec)
            for kind, specs in kinds
            for spec in specs
        }
        for index in range(len(unique)):
            positions = order[bounds[index] : bounds[index + 1]]
            parts: dict[str, dict[str, np.ndarray]] = {"input": {}, "output": {}}
            for kind, specs in kinds:
                for spec in specs:
                    shape = tuple(int(d) for d in shapes[(kind, spec.name)][positions[0]])
                    parts[kind][spec.name] = columns[(kind, spec.name)].stack(positions, shape)
            groups.append(CaptureGroup(inputs=parts["input"], outputs=parts["output"], positions=positions))
    return CaptureData(
        files=files,
        groups=groups,
        request_ids=np.asarray(table["request_id"].to_numpy(zero_copy_only=False), dtype=object),
        rows=table["row"].to_numpy(zero_copy_only=False),
        digests=sorted(set(table["manifest_sha256"].to_pylist())),
    )


def _shapes(chunked: Any, rank: int, samples: int) -> np.ndarray:
    if rank == 0:
        return np.zeros((samples, 0), np.int64)
    flat = chunked.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if flat.size != samples * rank:
        raise UsageError(
            "a capture file holds shapes of another rank than the bundle's; it was served by another bundle."
        )
    if flat.size and (flat.min() < 0 or flat.max() > MAX_DIMENSION):
        raise UsageError(f"a capture file records a dimension outside 0..{MAX_DIMENSION}; it was altered.")
    return flat.reshape(samples, rank).astype(np.int64)


class _ListColumn:
    """One list column of a capture, combined once: the values of any samples, stacked to a shape."""

    def __init__(self, chunked: Any, spec: TensorSpec) -> None:
        lists = chunked.combine_chunks()
        self.spec = spec
        self.offsets = lists.offsets.to_numpy().astype(np.int64)
        values = lists.values.to_numpy(zero_copy_only=False)  # every sample's values, once
        if spec.dtype == "string":
            self.values = np.asarray(values, dtype=object)
        else:
            self.values = values.astype(np.dtype(spec.dtype), copy=False)

    def stack(self, positions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        starts, ends = self.offsets[positions], self.offsets[positions + 1]
        wrong = (ends - starts) != size
        if wrong.any():
            raise UsageError(
                f"a capture file's column {self.spec.name!r} holds a sample of "
                f"{int((ends - starts)[wrong][0])} values where its shape {list(shape)} says {size}; "
                "the file was altered."
            )
        if (
            positions.size == len(self.offsets) - 1
            and self.offsets[0] == 0
            and np.array_equal(positions, np.arange(positions.size))
        ):  # every sample, in order: no gather
            picked = self.values[: self.offsets[-1]]
        else:
            picked = self.values[(starts[:, None] + np.arange(size)).reshape(-1)] if size else self.values[:0]
        return picked.reshape((positions.size, *shape))


def merged(groups: Iterable[CaptureGroup]) -> list[dict[str, dict[str, np.ndarray]]]:
    """Groups as the comparison loop's in-memory parts: ``{"inputs": ..., "outputs": ...}`` each."""
    return [{"inputs": g.inputs, "outputs": g.outputs} for g in groups]
