"""Reference arrays: ``.npz`` files, written and read without pickle, ever."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import BundleInvalid


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
                    raise BundleInvalid(f"{label} holds arrays {sorted(names)} but the manifest declares "
                                        f"{sorted(expected)}; re-export the bundle.")
                for name in expected:
                    with archive.open(f"{name}.npy") as member:
                        self.headers[name] = self._header(member, name)
        except BundleInvalid:
            raise
        except Exception as exc:  # zipfile, numpy's header parser (SyntaxError, ValueError, ...)
            raise BundleInvalid(f"{label} is truncated or not a numpy .npz ({type(exc).__name__}); "
                                "re-export the bundle.") from None
        rows = {name: shape[0] if shape else 1 for name, (shape, _) in self.headers.items()}
        if len(set(rows.values())) > 1:
            raise BundleInvalid(f"{label} holds arrays of different lengths {rows}; re-export the bundle.")
        self.rows = next(iter(rows.values()))
        self.names = expected

    def _header(self, member, name: str) -> tuple[tuple[int, ...], np.dtype]:
        shape, fortran_order, dtype = _read_header(member)
        if dtype.hasobject:
            raise BundleInvalid(f"{self.label} contains pickled objects, which paritybundle never loads; re-export the bundle.")
        if fortran_order and len(shape) > 1:
            raise BundleInvalid(f"{self.label}: array {name!r} is in Fortran order, which bundles never use; re-export.")
        return shape, dtype

    def elements_per_row(self, name: str) -> int:
        shape, _ = self.headers[name]
        return int(np.prod(shape[1:], dtype=np.int64)) if shape else 1

    def batches(self, batch_rows: int):
        """Yield ``(first_row, {name: rows})`` for consecutive batches of ``batch_rows`` rows."""
        with zipfile.ZipFile(self.path) as archive:
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
                raise BundleInvalid(f"{self.label} cannot be read ({type(exc).__name__}: {exc}); "
                                    "re-export the bundle.") from None
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
