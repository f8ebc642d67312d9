"""Sources of reference rows for the comparison loop (:mod:`.engine`).

* :class:`BundleReferences`: a verified bundle's own reference set, streamed from its ``.npz`` files.
* :class:`InMemoryReferences`: arrays already in memory (export validates what it is about to write).
* :class:`TestdataReferences`: an ONNX test data directory (``test_data_set_K/input_I.pb``,
  ``output_O.pb``), one batch per set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..bundle.manifest import TensorSpec
from ..bundle.references import ReferencePart, ReferenceSet, open_reference_groups
from ..bundle.store import VerifiedBundle
from ..errors import BundleInvalid, InputValidationError, UsageError
from ..runtime.validation import validate_inputs
from .engine import Batch

# Reference sets up to this size in memory (as their headers declare) are read and compared in
# one pass (fewer, larger numpy operations); larger ones stream in batches so memory stays flat.
STREAM_ABOVE_BYTES = 256 * 1024 * 1024


class BundleReferences:
    """A verified bundle's reference set (``parts``: inputs, outputs, and features if it has them),
    group after group; samples are numbered across the whole set (``manifest.reference.locate``)."""

    def __init__(self, bundle: VerifiedBundle, parts: Sequence[ReferencePart] = ("inputs", "outputs")) -> None:
        self.bundle = bundle
        self.groups: list[ReferenceSet] = open_reference_groups(bundle, parts)
        self.rows = sum(group.rows for group in self.groups)
        self._row_bytes = max(sum(s.row_bytes() for s in group.streams.values()) for group in self.groups)

    def total_elements(self, part: str, name: str) -> int:
        return sum(group.rows * group[part].elements_per_row(name) for group in self.groups)

    def rows_per_pass(self, batch_size: int | None) -> int:
        """All rows at once while the reference arrays are small in memory, else at most ``batch_size`` rows
        per pass, and fewer when that many rows would not fit the streaming budget."""
        if self.rows * self._row_bytes <= STREAM_ABOVE_BYTES:
            return max(self.rows, 1)
        fitting = max(1, STREAM_ABOVE_BYTES // max(self._row_bytes, 1))
        return min(batch_size or fitting, fitting)

    def batches(self, rows_per_pass: int) -> Iterator[Batch]:
        offset = 0
        for index, group in enumerate(self.groups):
            label = f"reference group {index}" if len(self.groups) > 1 else None
            for first, parts in group.batches(rows_per_pass):
                yield Batch(first=offset + first, rows=_rows(parts), parts=parts, label=label)
            offset += group.rows


class InMemoryReferences:
    """Parts already in memory: ``{"inputs": {name: array}, "outputs": {...}, ...}`` with equal rows, or a
    list of such groups (each with its own shapes), compared group after group."""

    def __init__(
        self,
        parts: Mapping[str, Mapping[str, np.ndarray]] | Sequence[Mapping[str, Mapping[str, np.ndarray]]],
        *,
        first: int = 0,
    ) -> None:
        # ``first``: the number of the first sample, when these rows are one shard of a larger set.
        self.first = first
        groups = [parts] if isinstance(parts, Mapping) else list(parts)
        self.groups = [
            {part: {name: np.asarray(a) for name, a in arrays.items()} for part, arrays in group.items()}
            for group in groups
        ]
        self.rows = sum(_rows(group) for group in self.groups)

    def total_elements(self, part: str, name: str) -> int:
        return sum(int(group[part][name].size) for group in self.groups)

    def batches(self, rows_per_pass: int) -> Iterator[Batch]:
        offset = self.first
        for index, group in enumerate(self.groups):
            rows = _rows(group)
            label = f"reference group {index}" if len(self.groups) > 1 else None
            for first in range(0, max(rows, 1), rows_per_pass):
                parts = {
                    part: {name: a[first : first + rows_per_pass] for name, a in arrays.items()}
                    for part, arrays in group.items()
                }
                yield Batch(first=offset + first, rows=_rows(parts), parts=parts, label=label)
            offset += rows


def _rows(parts: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    for arrays in parts.values():
        for array in arrays.values():
            return int(array.shape[0]) if np.ndim(array) else 1
    return 0


SET_PREFIX = "test_data_set_"


class TestdataReferences:
    """ONNX test data: each ``test_data_set_K`` is one batch (sets are small by design; each is read whole).

    Tensors are matched to ``input_order`` (the graph's input order) and to the declared
    ``outputs`` by position, as the test runners do; a name stored in a tensor must agree.

    Raises:
        UsageError: ``folder`` is not a test data directory.
        BundleInvalid: a set whose files do not match the bundle's inputs/outputs.
    """

    __test__ = False  # not a pytest class, despite its name

    def __init__(
        self,
        folder: str | Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        input_order: Sequence[str],
    ) -> None:
        root = Path(folder)
        self.folder = root
        self.sets = (
            sorted((p for p in root.glob(f"{SET_PREFIX}*") if p.is_dir()), key=lambda p: (len(p.name), p.name))
            if root.is_dir()
            else []
        )
        if not self.sets:
            raise UsageError(
                f"{root} holds no {SET_PREFIX}K directories; pass a directory written by "
                "`bundle testdata` or in ONNX's test data layout."
            )
        self.outputs, self.input_order = list(outputs), list(input_order)
        # Read once up front: the judges need the total element count, and sets are small.
        self._loaded = [
            (
                path.name,
                _validated(path.name, inputs, _load_tensors(path, "input", self.input_order)),
                _load_tensors(path, "output", [s.name for s in self.outputs]),
            )
            for path in self.sets
        ]
        self.rows = sum(_rows({"inputs": inputs}) for _, inputs, _ in self._loaded)

    def total_elements(self, part: str, name: str) -> int:
        return sum(
            int(np.asarray((inputs if part == "inputs" else outputs)[name]).size) for _, inputs, outputs in self._loaded
        )

    def batches(self, rows_per_pass: int) -> Iterator[Batch]:
        first = 0
        for name, inputs, outputs in self._loaded:
            rows = _rows({"inputs": inputs})
            yield Batch(first=first, rows=rows, parts={"inputs": inputs, "outputs": outputs}, label=name)
            first += rows


def _validated(name: str, specs: Sequence[TensorSpec], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A set's inputs against the bundle's specs: test data from elsewhere is checked like a request."""
    try:
        return validate_inputs(specs, arrays)
    except InputValidationError as exc:
        raise BundleInvalid(f"{name} does not match the bundle's inputs: {exc}") from None


def _load_tensors(folder: Path, kind: str, names: list[str]) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    files = sorted(folder.glob(f"{kind}_*.pb"))
    if len(files) != len(names):
        raise BundleInvalid(
            f"{folder.name} has {len(files)} {kind} tensors, the bundle's graph has {len(names)} ({', '.join(names)})."
        )
    arrays = {}
    for position, name in enumerate(names):
        path = folder / f"{kind}_{position}.pb"
        tensor = onnx.TensorProto()
        try:
            tensor.ParseFromString(path.read_bytes())
            array = numpy_helper.to_array(tensor)
        except Exception as exc:  # protobuf DecodeError, onnx's own errors, a missing file
            raise BundleInvalid(
                f"{folder.name}/{path.name} is not a readable TensorProto ({type(exc).__name__})."
            ) from None
        if tensor.name and tensor.name != name:
            raise BundleInvalid(
                f"{folder.name}/{path.name} holds {tensor.name!r}, but position {position} of the "
                f"bundle's graph {kind}s is {name!r}."
            )
        arrays[name] = array.astype(str) if array.dtype == object else array
    return arrays
