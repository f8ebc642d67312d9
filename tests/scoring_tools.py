"""Inputs for the scoring tests: a bundle's own reference rows as a table, and what research computed for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paritybundle.bundle.store import open_bundle
from paritybundle.check.sources import BundleReferences


def reference_rows(bundle: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The bundle's reference inputs and research outputs, every group in order."""
    source = BundleReferences(open_bundle(bundle))
    inputs: dict[str, list[np.ndarray]] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    for batch in source.batches(10**9):
        for name, array in batch.parts["inputs"].items():
            inputs.setdefault(name, []).append(array)
        for name, array in batch.parts["outputs"].items():
            outputs.setdefault(name, []).append(array)
    return ({n: np.concatenate(a) for n, a in inputs.items()}, {n: np.concatenate(a) for n, a in outputs.items()})


def reference_table(bundle: Path, repeat: int = 1, *, extra: dict | None = None):
    """The reference inputs as an Arrow table (one column per input; a list column past one value per sample),
    ``repeat`` times over, with a ``customer`` column (a key a user would keep) and ``extra`` columns."""
    import pyarrow as pa

    inputs, _ = reference_rows(bundle)
    columns = {}
    for name, array in inputs.items():
        array = np.concatenate([array] * repeat)
        if array.ndim > 1 and int(np.prod(array.shape[1:])) > 1:
            flat = array.reshape(len(array), -1)
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        else:
            columns[name] = pa.array(array.reshape(-1) if array.dtype != object else list(array.reshape(-1)))
    rows = len(next(iter(columns.values())))
    columns["customer"] = pa.array([f"c{i:06d}" for i in range(rows)])
    columns.update(extra or {})
    return pa.table(columns)


def expected_outputs(bundle: Path, repeat: int = 1) -> dict[str, np.ndarray]:
    _, outputs = reference_rows(bundle)
    return {n: np.concatenate([a] * repeat) for n, a in outputs.items()}


def write_parquet(table, path: Path, files: int = 1) -> Path:
    """``table`` as one Parquet file at ``path``, or as ``files`` part files in the folder ``path``."""
    import pyarrow.parquet as pq

    if files == 1 and path.suffix == ".parquet":
        pq.write_table(table, path)
        return path
    path.mkdir(parents=True, exist_ok=True)
    size = -(-table.num_rows // files)
    for part in range(files):
        pq.write_table(table.slice(part * size, size), path / f"part-{part:03d}.parquet")
    return path


def fake_numpy_path(tmp_path: Path, version: str = "99.0.0") -> Path:
    """A folder that, put first on PYTHONPATH, makes an environment report numpy ``version``: a
    worker whose environment drifted critically from the lock (another numpy major version)."""
    folder = tmp_path / "drifted-site"
    info = folder / f"numpy-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: numpy\nVersion: {version}\n")
    return folder


def scored_outputs(path: Path, bundle: Path) -> tuple[object, dict[str, np.ndarray]]:
    """A scored table (file or folder) sorted by row id, and its outputs as arrays."""
    import pyarrow.parquet as pq

    from paritybundle.scoring.columns import output_arrays

    table = pq.read_table(path)
    key = "row_id" if "row_id" in table.schema.names else table.schema.names[0]
    table = table.sort_by(key)
    return table, output_arrays(table, open_bundle(bundle).manifest)


def write_capture(
    bundle: Path, directory: Path, *, files: int, requests_per_file: int, altered: dict | None = None, seed: int = 3
) -> Path:
    """A capture as `bundle serve --capture` writes it (the writer's own encoding), without a server:
    requests of 1-3 reference rows each, answered with research's outputs; ``altered`` maps a request
    id to an amount added to its served outputs (a runtime that answered otherwise)."""
    import hashlib

    import pyarrow.parquet as pq

    from paritybundle.runtime.capture import Captured, chunk_batch, chunk_of, schema

    verified = open_bundle(bundle)
    manifest = verified.manifest
    raw = (bundle / "bundle.json").read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    inputs, outputs = reference_rows(bundle)
    total = len(next(iter(inputs.values())))
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrow_schema = schema(manifest, raw)
    number = 0
    for part in range(files):
        records = []
        for _ in range(requests_per_file):
            picks = rng.integers(0, total, size=int(rng.integers(1, 4)))
            request_id = f"req-{number:05d}"
            shift = (altered or {}).get(request_id, 0.0)
            records.append(
                Captured(
                    request_id=request_id,
                    received_at=1.7e9 + number,
                    inputs={n: a[picks] for n, a in inputs.items()},
                    outputs={n: a[picks] + shift for n, a in outputs.items()},
                )
            )
            number += 1
        batch = chunk_batch(chunk_of(records, manifest), manifest, digest, arrow_schema)
        pq.write_table(
            __import__("pyarrow").Table.from_batches([batch], schema=arrow_schema),
            directory / f"capture-{part:05d}.parquet",
        )
    return directory
