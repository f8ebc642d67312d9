"""Reference arrays: ``.npz`` files, written and read without pickle, ever.

:class:`ArrayStream` reads one ``.npz`` in batches of rows; :func:`open_reference_groups`
opens a verified bundle's reference set (inputs, research outputs, and features when
there is preprocessing) as streams that agree on their row count, one set per group of shapes.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import BundleInvalid

if TYPE_CHECKING:
    from .manifest import TensorSpec
    from .store import VerifiedBundle


def to_storable(array: np.ndarray) -> np.ndarray:
    """Arrays as ``np.savez`` can store them without pickle (object strings -> unicode)."""
    array = np.asarray(array)
    if array.dtype.kind == "O":
        return array.astype(str)
    return np.ascontiguousarray(array)


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write named arrays to ``path`` as an uncompressed ``.npz`` (fast to read back)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{name: to_storable(a) for name, a in arrays.items()})
    path.write_bytes(buffer.getvalue())


def _read_header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of a ``.npy`` stream, with numpy's own reader; leaves
    the stream at the first data byte."""
    version = np.lib.format.read_magic(member)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(member)
    return tuple(shape), fortran_order, dtype


class ArrayStream:
    """Rows of the named arrays of an ``.npz``, read in batches without loading whole arrays.

    Each member's ``.npy`` header is parsed with numpy's own reader; rows are then read
    from the (uncompressed or deflated) member stream, so memory holds one batch.

    Raises:
        BundleInvalid: a missing or extra array, pickled content, Fortran order, disagreeing
            row counts, or data shorter than its header says.
    """

    def __init__(self, path: Path, expected: list[str], *, label: str) -> None:
        self.path, self.label = path, label
        self.headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                if sorted(names) != sorted(expected) or len(archive.namelist()) != len(names):
                    raise BundleInvalid(
                        f"{label} holds arrays {sorted(names)} but the manifest declares "
                        f"{sorted(expected)}; re-export the bundle."
                    )
                for name in expected:
                    with archive.open(f"{name}.npy") as member:
                        self.headers[name] = self._header(member, name)
        except BundleInvalid:
            raise
        except Exception as exc:  # zipfile, numpy's header parser (SyntaxError, ValueError, ...)
            raise BundleInvalid(
                f"{label} is truncated or not a numpy .npz ({type(exc).__name__}); re-export the bundle."
            ) from None
        rows = {name: shape[0] if shape else 1 for name, (shape, _) in self.headers.items()}
        if len(set(rows.values())) > 1:
            raise BundleInvalid(f"{label} holds arrays of different lengths {rows}; re-export the bundle.")
        self.rows = next(iter(rows.values()))
        self.names = expected

    def _header(self, member, name: str) -> tuple[tuple[int, ...], np.dtype]:
        shape, fortran_order, dtype = _read_header(member)
        if dtype.hasobject:
            raise BundleInvalid(
                f"{self.label} contains pickled objects, which paritybundle never loads; re-export the bundle."
            )
        if fortran_order and len(shape) > 1:
            raise BundleInvalid(
                f"{self.label}: array {name!r} is in Fortran order, which bundles never use; re-export."
            )
        return shape, dtype

    def elements_per_row(self, name: str) -> int:
        shape, _ = self.headers[name]
        return int(np.prod(shape[1:], dtype=np.int64)) if shape else 1

    def row_bytes(self) -> int:
        """Bytes one row of all the arrays takes in memory, as the headers declare (not the file's size:
        a deflated ``.npz`` of 1 MB can declare a gigabyte)."""
        return sum(self.elements_per_row(name) * dtype.itemsize for name, (_, dtype) in self.headers.items())

    def check_specs(self, specs: Sequence[TensorSpec]) -> None:
        """Each array as its spec declares: dtype (native byte order), rank and fixed dimensions.

        Raises:
            BundleInvalid: naming the array and the difference.
        """
        for spec in specs:
            shape, dtype = self.headers[spec.name]
            wanted = "a unicode string" if spec.dtype == "string" else spec.dtype
            matches = dtype.kind == "U" if spec.dtype == "string" else dtype == np.dtype(spec.dtype)
            if not matches or not dtype.isnative:
                raise BundleInvalid(
                    f"{self.label}: array {spec.name!r} is {dtype.str}, but the manifest declares "
                    f"{wanted}; re-export the bundle."
                )
            if len(shape) != len(spec.shape) or not shape:
                raise BundleInvalid(
                    f"{self.label}: array {spec.name!r} has shape {list(shape)}, but the manifest "
                    f"declares {spec.shape}; re-export the bundle."
                )
            for axis, (dim, size) in enumerate(zip(spec.shape, shape, strict=True)):
                if isinstance(dim, int) and dim != size:
                    raise BundleInvalid(
                        f"{self.label}: array {spec.name!r} has {size} along axis {axis}, but the "
                        f"manifest declares {dim}; re-export the bundle."
                    )

    def batches(self, batch_rows: int):
        """Yield ``(first_row, {name: rows})`` for consecutive batches of ``batch_rows`` rows."""
        with zipfile.ZipFile(self.path) as archive:
            infos = {name: archive.getinfo(f"{name}.npy") for name in self.names}
            members: dict[str, Any]  # a _StoredMember or zipfile's reader: both read() the member in order
            if all(info.compress_type == zipfile.ZIP_STORED for info in infos.values()):
                # Stored members (what export writes) are read straight from the file: zipfile would CRC-32
                # every byte again, bytes the bundle's sha256 has just verified (a tenth of a check's cost).
                members = {name: _StoredMember(self.path, info, self.label) for name, info in infos.items()}
            else:
                members = {name: archive.open(f"{name}.npy") for name in self.names}
            try:
                for member in members.values():
                    _read_header(member)  # validated in __init__; skip to the data
                for first in range(0, self.rows, batch_rows):
                    count = min(batch_rows, self.rows - first)
                    yield first, {name: self._read(members[name], name, count) for name in self.names}
            except BundleInvalid:
                raise
            except Exception as exc:
                raise BundleInvalid(
                    f"{self.label} cannot be read ({type(exc).__name__}: {exc}); re-export the bundle."
                ) from None
            finally:
                for member in members.values():
                    member.close()

    def read_all(self) -> dict[str, np.ndarray]:
        """Every row of every array, in one batch (a reference set always has at least one sample)."""
        for _, arrays in self.batches(max(self.rows, 1)):
            return arrays
        raise BundleInvalid(f"{self.label} holds no samples; re-export the bundle.")

    def _read(self, member, name: str, rows: int) -> np.ndarray:
        shape, dtype = self.headers[name]
        wanted = rows * self.elements_per_row(name) * dtype.itemsize
        data = member.read(wanted)
        if len(data) != wanted:
            raise BundleInvalid(f"{self.label}: array {name!r} is shorter than its header says; the file is truncated.")
        return np.frombuffer(data, dtype=dtype).reshape((rows, *shape[1:]))


class _StoredMember:
    """An uncompressed ``.npz`` member as a stream: reads stop at the member's end."""

    def __init__(self, path: Path, info: zipfile.ZipInfo, label: str) -> None:
        self._file = open(path, "rb")
        self._file.seek(info.header_offset)
        header = self._file.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            self._file.close()
            raise BundleInvalid(f"{label} is not a well-formed .npz (a member's local header); re-export the bundle.")
        skip = int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        self._file.seek(info.header_offset + 30 + skip)
        self._left = info.file_size

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._file.read(size)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


ReferencePart = Literal["inputs", "outputs", "features"]


class ReferenceSet:
    """A verified bundle's reference arrays, one :class:`ArrayStream` per part, all of ``rows`` rows.

    Parts: ``inputs`` (raw inputs, as a caller sends them), ``outputs`` (the research
    outputs) and, for a bundle with preprocessing, ``features`` (the research features).
    """

    def __init__(self, streams: Mapping[str, ArrayStream]) -> None:
        self.streams = dict(streams)
        rows = {part: stream.rows for part, stream in self.streams.items()}
        if len(set(rows.values())) > 1:
            counts = ", ".join(f"{count} {part}" for part, count in rows.items())
            raise BundleInvalid(f"the reference set has {counts} rows; they must agree, re-export the bundle.")
        self.rows = next(iter(rows.values()))

    def __getitem__(self, part: str) -> ArrayStream:
        return self.streams[part]

    def batches(self, batch_rows: int) -> Iterator[tuple[int, dict[str, dict[str, np.ndarray]]]]:
        """Yield ``(first_row, {part: {name: rows}})`` for consecutive batches of ``batch_rows`` rows."""
        parts = list(self.streams)
        for pieces in zip(*(self.streams[part].batches(batch_rows) for part in parts), strict=True):
            yield pieces[0][0], {part: arrays for part, (_, arrays) in zip(parts, pieces, strict=True)}


def open_reference_groups(
    bundle: VerifiedBundle,
    parts: Sequence[ReferencePart] = ("inputs", "outputs"),
) -> list[ReferenceSet]:
    """The bundle's reference set as streams, one :class:`ReferenceSet` per group of shapes (headers read
    and validated against the specs and the declared rows, no data yet).

    Raises:
        BundleInvalid: a part the manifest does not have, arrays that do not match the
            declared names, unreadable ``.npz`` files, or parts that disagree on rows.
    """
    manifest = bundle.manifest
    specs = {
        "inputs": list(manifest.inputs),
        "outputs": list(manifest.outputs),
        "features": list(manifest.preprocessing.features) if manifest.preprocessing else [],
    }
    sets = []
    for group in manifest.reference.all_groups():
        files = {"inputs": group.inputs, "outputs": group.outputs, "features": group.features}
        streams: dict[str, ArrayStream] = {}
        for part in parts:
            file = files[part]
            if file is None:
                raise BundleInvalid(f"the bundle has no reference {part}; re-export the bundle.")
            stream = ArrayStream(bundle.path(file), [s.name for s in specs[part]], label=file)
            stream.check_specs(specs[part])
            if stream.rows != group.samples:
                raise BundleInvalid(
                    f"{file} holds {stream.rows} samples, but the manifest declares "
                    f"{group.samples}; re-export the bundle."
                )
            streams[part] = stream
        sets.append(ReferenceSet(streams))
    return sets
