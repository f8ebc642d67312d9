"""Table columns <-> a bundle's tensors, for batch scoring: one plan, checked before any row is scored.

Input columns are named after the bundle's inputs. A sample's input is

* a plain column (numbers, strings) when the input holds one value per sample (shape ``[batch]``
  or ``[batch, 1]``), or
* a list column (``list``, ``large_list`` or ``fixed_size_list``) of the sample's values in
  row-major order, for any fixed per-sample shape (an 8x8 image is a list of 64 numbers).

Outputs are written the same way: a plain column when an output holds one value per sample, else a
``fixed_size_list`` with the per-sample shape in the field's metadata (``paritybundle.shape``).
Beside them: the row id (``row_id``, or the input's own ``--id-column``) and the ``--keep``
columns, passed through unchanged.

Every mismatch a schema can show (a missing column, numbers where the model takes strings, floats
where it takes integers, a list where it takes one value) is a :class:`UsageError` naming the column
before anything runs or is written; what only the data can show (a missing value in an integer
column, a list of the wrong length) is one naming the column and the row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle.manifest import Manifest, TensorSpec
from ..errors import InputValidationError, UsageError
from ..runtime.capture import pyarrow_modules

ROW_ID = "row_id"
SHAPE_METADATA = b"paritybundle.shape"


@dataclass(frozen=True)
class InputColumn:
    spec: TensorSpec
    per_sample: tuple[int, ...]  # the sample's shape (without the batch axis)
    listed: bool  # a list column (else one value per row)


@dataclass(frozen=True)
class ColumnPlan:
    """How a table's columns become the bundle's inputs, and what the scored table holds."""

    inputs: tuple[InputColumn, ...]
    outputs: tuple[TensorSpec, ...]
    keep: tuple[str, ...]
    id_column: str | None  # the input's own id column, carried as it is; None: row ids are made
    schema: Any  # the output's Arrow schema

    @property
    def read_columns(self) -> list[str]:
        """The input columns a reader needs (nothing else is read)."""
        names = [c.spec.name for c in self.inputs] + list(self.keep)
        if self.id_column is not None:
            names.append(self.id_column)
        return list(dict.fromkeys(names))


def per_sample_shape(spec: TensorSpec, kind: str) -> tuple[int, ...]:
    """The fixed shape of one sample of ``spec``; a usage error for a symbolic dimension past the batch axis."""
    rest = spec.shape[1:]
    if any(not isinstance(d, int) for d in rest):
        raise UsageError(
            f"{kind} {spec.name!r} has shape {spec.shape}: batch scoring needs every dimension but the "
            "first fixed (a variable-length input cannot be a column of a table)."
        )
    return tuple(int(d) for d in rest)


def plan_columns(
    manifest: Manifest,
    schema: Any,
    *,
    keep: Sequence[str] = (),
    id_column: str | None = None,
    source: str = "the input",
) -> ColumnPlan:
    """Match ``schema`` (an Arrow schema) against ``manifest``'s inputs; the plan, or a usage error naming the column.

    Raises:
        UsageError: a missing column, a column of the wrong type, a --keep or --id-column that is not
            there, or an output column name taken twice.
    """
    pa, _ = pyarrow_modules()
    names = set(schema.names)
    inputs = []
    for spec in manifest.inputs:
        if len(spec.shape) == 0:
            raise UsageError(f"input {spec.name!r} is a scalar without a batch axis; it cannot be scored row by row.")
        if spec.name not in names:
            raise UsageError(
                f"{source} has no column {spec.name!r}, an input of the model "
                f"(it takes {', '.join(s.name for s in manifest.inputs)}); its columns are "
                f"{', '.join(schema.names[:20])}."
            )
        shape = per_sample_shape(spec, "input")
        arrow_type = _decoded(pa, schema.field(spec.name).type)
        listed = (
            pa.types.is_list(arrow_type)
            or pa.types.is_large_list(arrow_type)
            or pa.types.is_fixed_size_list(arrow_type)
        )
        if not listed and math.prod(shape) != 1:
            raise UsageError(
                f"column {spec.name!r} holds one value per row, but input {spec.name!r} takes "
                f"{math.prod(shape)} per sample (shape {list(shape)}); store each sample as a list."
            )
        values = _decoded(pa, arrow_type.value_type) if listed else arrow_type
        _require_type(spec, values, source)
        inputs.append(InputColumn(spec=spec, per_sample=shape, listed=listed))
    for name in keep:
        if name not in names:
            raise UsageError(f"--keep {name!r}: {source} has no such column.")
    if id_column is not None and id_column not in names:
        raise UsageError(f"--id-column {id_column!r}: {source} has no such column.")
    if id_column is not None:
        id_type = _decoded(pa, schema.field(id_column).type)
        if pa.types.is_nested(id_type) or pa.types.is_null(id_type):
            raise UsageError(
                f"--id-column {id_column!r} holds {id_type} values; a row id is one value per row "
                "(a number or a string). Pass such a column, or leave --id-column out."
            )
    outputs = tuple(manifest.outputs)
    for spec in outputs:
        per_sample_shape(spec, "output")
    fields = [schema.field(id_column) if id_column is not None else pa.field(ROW_ID, pa.int64(), nullable=False)]
    fields += [schema.field(name) for name in keep if name != id_column]
    fields += [_output_field(pa, spec) for spec in outputs]
    taken: set[str] = set()
    for field in fields:
        if field.name in taken:
            raise UsageError(
                f"the scored table would have two columns named {field.name!r}; keep fewer columns, "
                "or rename the one in the input."
            )
        taken.add(field.name)
    return ColumnPlan(
        inputs=tuple(inputs),
        outputs=outputs,
        keep=tuple(n for n in keep if n != id_column),
        id_column=id_column,
        schema=pa.schema(fields),
    )


def _decoded(pa: Any, arrow_type: Any) -> Any:
    """A dictionary-encoded type (a pandas category written to Parquet) as the type of its values."""
    return arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type


def _require_type(spec: TensorSpec, values: Any, source: str) -> None:
    pa, _ = pyarrow_modules()
    if spec.dtype == "string":
        fits = pa.types.is_string(values) or pa.types.is_large_string(values)
    elif spec.dtype == "bool":
        fits = pa.types.is_boolean(values)
    elif spec.dtype.startswith(("int", "uint")):
        fits = pa.types.is_integer(values)
    else:  # floats: integer columns convert exactly enough (what pandas and CSV readers make of whole numbers)
        fits = pa.types.is_floating(values) or pa.types.is_integer(values) or pa.types.is_decimal(values)
    if not fits:
        raise UsageError(
            f"column {spec.name!r} of {source} holds {values}, but input {spec.name!r} is {spec.dtype}; "
            "convert the column before scoring."
        )


def _output_field(pa: Any, spec: TensorSpec) -> Any:
    shape = tuple(int(d) for d in spec.shape[1:])
    values = pa.string() if spec.dtype == "string" else pa.from_numpy_dtype(np.dtype(spec.dtype))
    metadata = {SHAPE_METADATA: json.dumps(list(shape)).encode()}
    if math.prod(shape) == 1:
        return pa.field(spec.name, values, metadata=metadata)
    return pa.field(spec.name, pa.list_(values, math.prod(shape)), metadata=metadata)


def inputs_of(plan: ColumnPlan, table: Any, first_row: int = 0) -> dict[str, np.ndarray]:
    """The bundle's inputs from a batch of the input table (``first_row``: its first row's place, for messages).

    Raises:
        InputValidationError: a missing value where the input cannot hold one, or a list of the wrong length.
    """
    pa, _ = pyarrow_modules()
    arrays: dict[str, np.ndarray] = {}
    for column in plan.inputs:
        spec = column.spec
        chunked = table.column(spec.name)
        data = chunked.combine_chunks() if isinstance(chunked, pa.ChunkedArray) else chunked
        if pa.types.is_dictionary(data.type):
            data = data.dictionary_decode()
        rows = len(data)
        if data.null_count and (
            column.listed or spec.dtype in ("string", "bool") or not spec.dtype.startswith("float")
        ):
            raise InputValidationError(
                f"column {spec.name!r} has a missing value at row {first_row + _first_null(data)}, "
                f"and input {spec.name!r} ({spec.dtype}) cannot hold one."
            )
        if column.listed:
            values = _list_values(data, spec, math.prod(column.per_sample), first_row)
            array = _to_numpy(values, spec).reshape((rows, *column.per_sample))
        else:
            array = _to_numpy(data, spec).reshape((rows, *column.per_sample))
        arrays[spec.name] = array
    return arrays


def _first_null(data: Any) -> int:
    return int(np.flatnonzero(data.is_null().to_numpy(zero_copy_only=False))[0])


def _list_values(data: Any, spec: TensorSpec, width: int, first_row: int) -> Any:
    pa, _ = pyarrow_modules()
    if pa.types.is_fixed_size_list(data.type):
        if data.type.list_size != width:
            raise InputValidationError(
                f"column {spec.name!r} holds lists of {data.type.list_size} values, but input "
                f"{spec.name!r} takes {width} per sample."
            )
        return data.flatten()
    lengths = data.value_lengths().to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != width)
    if wrong.size:
        row = int(wrong[0])
        raise InputValidationError(
            f"column {spec.name!r} holds {int(lengths[row])} values at row {first_row + row}, "
            f"but input {spec.name!r} takes {width} per sample."
        )
    if data.values.null_count:
        raise InputValidationError(
            f"column {spec.name!r} has a missing value inside a list; input {spec.name!r} cannot hold one."
        )
    return data.flatten()


def _to_numpy(values: Any, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == "string":
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)
    array = values.to_numpy(zero_copy_only=False)  # nulls of a float column become NaN
    if spec.dtype.startswith("float") and array.dtype.kind not in "f":
        array = array.astype(spec.dtype)  # whole numbers (and decimals) for a float input
    return array


def scored_table(plan: ColumnPlan, table: Any, outputs: Mapping[str, np.ndarray], row_ids: np.ndarray | None) -> Any:
    """The scored batch: row id (made, or the input's id column), kept columns, then one column per output."""
    pa, _ = pyarrow_modules()
    columns: list[Any] = []
    if plan.id_column is not None:
        columns.append(table.column(plan.id_column))
    else:
        columns.append(pa.array(row_ids, type=pa.int64()))
    columns += [table.column(name) for name in plan.keep]
    for spec in plan.outputs:  # the schema's last fields, one per output, named after it
        columns.append(_output_column(pa, plan.schema.field(spec.name), outputs[spec.name]))
    return pa.Table.from_arrays(columns, schema=plan.schema)


def _output_column(pa: Any, field: Any, array: np.ndarray) -> Any:
    rows = array.shape[0] if array.ndim else 1
    flat = np.ascontiguousarray(array).reshape(rows, -1)
    if pa.types.is_fixed_size_list(field.type):
        values = pa.array(flat.reshape(-1), type=field.type.value_type)
        return pa.FixedSizeListArray.from_arrays(values, field.type.list_size)
    return pa.array(flat.reshape(-1), type=field.type)


def output_arrays(table: Any, manifest: Manifest) -> dict[str, np.ndarray]:
    """A scored table's output columns back as arrays in the outputs' shapes (from any engine: Spark's
    lists have no fixed size, so the shapes come from the manifest)."""
    result = {}
    for spec in manifest.outputs:
        column = table.column(spec.name).combine_chunks()
        values = column.flatten() if column.type.num_fields else column  # a list column's values, row-major
        shape = per_sample_shape(spec, "output")
        result[spec.name] = np.asarray(values.to_numpy(zero_copy_only=False)).reshape((len(column), *shape))
    return result
