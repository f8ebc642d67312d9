"""Batch scoring (`bundle score`) against the same job done by hand, side by side in one run.

The wine example bundle (13 float columns and a category through frozen preprocessing, 3 class
scores) scores ROWS rows (its reference rows repeated) from one Parquet file of 64k-row groups.

1. ``--engine local`` vs a bare ONNX Runtime loop over the same file (pyarrow batches of 64k rows
   -> numpy -> ``session.run`` -> the scores written as Parquet, nothing checked): time, both
   interleaved REPS times; ours includes its whole gate (verify, drift, the reference check).
   Memory: peak RSS of ``--engine local`` in its own process at ROWS and 4 x ROWS rows (flat: ~1.0x;
   the first few dozen batches warm the allocators up, so a much smaller run peaks lower).
2. ``--engine ray`` with 2 workers vs plain Ray Data ``read_parquet -> map_batches(actor with a bare
   session) -> write_parquet`` with the same actor count, CPUs per actor and batch size, on one
   local Ray started for both; the gate's cost per worker is read from the job's own report.
3. Scaling: ``--engine ray`` at each worker count of WORKERS (default ``1,2``) on the same Ray.
   On a larger machine: ``WORKERS=1,8,16 RAY_ADDRESS=auto python -m bench score``. Expected there:
   each actor scores independently (no shuffle, no driver round trip but one small ledger call per
   batch), so time falls near-linearly until the Parquet reads or the object store saturate;
   expect >= 0.8 efficiency at 8 workers and >= 0.6 at 16 with ROWS large enough that each actor
   gets 50+ batches (ROWS >= 16 * 50 * 65536 = 52M for 16 workers). On this 2-core machine the
   two actors share the cores with the reads and the driver, so 1 -> 2 gains little.

Knobs: ROWS (1,000,000), REPS (3), WORKERS ("1,2"), RAY_ADDRESS (default: a local Ray, 2 CPUs),
SKIP_RAY (1: parts 1 only, for the smoke test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np

from ._common import interleaved, median, print_table

ROOT = Path(__file__).resolve().parent.parent
ROWS, REPS = int(os.environ.get("ROWS", "1000000")), int(os.environ.get("REPS", "3"))
WORKERS = [int(w) for w in os.environ.get("WORKERS", "1,2").split(",")]
BATCH = 65_536


def wine_bundle(folder: Path) -> Path:
    from paritybundle.training import export_spec

    sys.path.insert(0, str(ROOT / "examples" / "wine"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("wine_train", ROOT / "examples" / "wine" / "train.py")

    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    export_spec(module.make_spec(), folder / "wine", force=True)
    return folder / "wine"


def rows_file(bundle: Path, rows: int, path: Path) -> Path:
    """``rows`` rows drawn from the bundle's reference inputs, as one Parquet file of 64k-row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    inputs = dict(np.load(bundle / "reference" / "inputs.npz", allow_pickle=True))
    # One batch's worth of random rows, tiled: every size holds the same rows in the same batches, so
    # peak memory at two sizes differs only by what the row count itself costs.
    base = np.random.default_rng(0).integers(0, len(next(iter(inputs.values()))), size=BATCH)
    picks = np.resize(base, rows)
    table = pa.table(
        {
            name: pa.array(values[picks].tolist() if values.dtype == object else values[picks])
            for name, values in inputs.items()
        }
    )
    pq.write_table(table, path, row_group_size=BATCH)
    return path


def bare_loop(bundle: Path, source: Path, out: Path) -> int:
    """What a team writes by hand: batches -> numpy -> session.run -> Parquet. Nothing verified or checked."""
    import onnxruntime
    import pyarrow as pa
    import pyarrow.parquet as pq

    session = onnxruntime.InferenceSession(str(bundle / "pipeline.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: i.type for i in session.get_inputs()}
    writer, rows = None, 0
    for batch in pq.ParquetFile(source).iter_batches(BATCH, columns=list(feeds)):
        feed = {}
        for name, kind in feeds.items():
            values = batch.column(name).to_numpy(zero_copy_only=False)
            feed[name] = values.astype(object) if kind == "tensor(string)" else values.astype(np.float32)
        scores = session.run(None, feed)[0]
        table = pa.table({"scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1)), scores.shape[1])})
        writer = writer or pq.ParquetWriter(str(out), table.schema)
        writer.write_table(table)
        rows += batch.num_rows
    if writer is not None:  # None only when the input had no batches
        writer.close()
    return rows


_PEAK = textwrap.dedent("""
    import json, sys
    from paritybundle.commands.score import score
    report = score(sys.argv[1], sys.argv[2], sys.argv[3], force=True)
    peak = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
    print(json.dumps({"rows": report.rows_scored, "peak": peak}))
""")


def peak_memory(bundle: Path, source: Path, out: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(bundle), str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def local_rows(bundle: Path, folder: Path, rows: int, reps: int) -> list[tuple[str, ...]]:
    from paritybundle.commands.score import score

    source = rows_file(bundle, rows, folder / "rows.parquet")
    larger = rows_file(bundle, 4 * rows, folder / "larger.parquet")
    reports = []
    times = interleaved(
        {
            "paritybundle": lambda: reports.append(score(bundle, source, folder / "scores", force=True)),
            "bare": lambda: bare_loop(bundle, source, folder / "bare.parquet"),
        },
        reps,
    )
    ours, bare = median(times["paritybundle"]), median(times["bare"])
    gate = median([r.workers[0].gate_seconds for r in reports])
    small, large = peak_memory(bundle, source, folder / "m1"), peak_memory(bundle, larger, folder / "m2")
    (folder / "larger.parquet").unlink()
    return [
        (
            f"local, {rows:,} rows (s, median of {reps})",
            f"{ours:.2f}",
            f"{bare:.2f} (bare ORT loop)",
            f"{ours / bare:.2f}x (<= 1.15x)",
        ),
        ("  of which the parity gate (s)", f"{gate:.2f}", "-", f"{gate / ours:.1%} of the job"),
        (
            f"local peak RSS, {large['rows']:,} vs {small['rows']:,} rows (MiB)",
            f"{large['peak'] / 2**20:.0f}",
            f"{small['peak'] / 2**20:.0f}",
            f"{large['peak'] / small['peak']:.2f}x (flat: ~1.0x)",
        ),
    ]


class _BareActor:
    """Plain Ray Data: an actor holding a bare ONNX Runtime session (no verification, no check)."""

    def __init__(self, model: str) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.feeds = {i.name: i.type for i in self.session.get_inputs()}

    def __call__(self, batch):  # noqa: ANN001, ANN204
        import pyarrow as pa

        feed = {}
        for name, kind in self.feeds.items():
            values = batch.column(name).to_numpy()
            feed[name] = values.astype(object) if kind == "tensor(string)" else values.astype(np.float32)
        scores = self.session.run(None, feed)[0]
        return pa.table({"scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1)), scores.shape[1])})


def ray_rows(bundle: Path, folder: Path, rows: int, reps: int) -> list[tuple[str, ...]]:
    import ray

    from paritybundle.commands.score import score
    from paritybundle.scoring.ray_engine import actor_cpus

    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        # A folder of 16 files, as a data lake holds a table: Ray Data reads a file as one block, so one
        # file would feed one actor however many there are.
        source = folder / "rows-16"
        source.mkdir(exist_ok=True)
        one = (
            rows_file(bundle, rows, folder / "rows.parquet")
            if not (folder / "rows.parquet").exists()
            else folder / "rows.parquet"
        )
        import pyarrow.parquet as pq

        whole = pq.read_table(one)
        share = -(-whole.num_rows // 16)
        for part in range(16):
            pq.write_table(whole.slice(part * share, share), source / f"part-{part:02d}.parquet", row_group_size=BATCH)
        columns = whole.schema.names
        reports: dict[int, list] = {w: [] for w in WORKERS}

        def ours(workers: int):
            return lambda: reports[workers].append(
                score(bundle, source, folder / f"ray-{workers}", engine="ray", workers=workers, force=True)
            )

        def plain():
            shutil.rmtree(folder / "plain", ignore_errors=True)
            (
                ray.data.read_parquet(str(source))
                .select_columns(columns)
                .map_batches(
                    _BareActor,
                    fn_constructor_kwargs={"model": str(bundle / "pipeline.onnx")},
                    batch_format="pyarrow",
                    batch_size=BATCH,
                    compute=ray.data.ActorPoolStrategy(size=2),
                    num_cpus=actor_cpus(2),
                )
                .write_parquet(str(folder / "plain"))
            )

        warnings.filterwarnings("ignore", category=UserWarning)  # Ray's "fewer inputs than actors" at small ROWS
        candidates = {"plain": plain, **{f"ours-{w}": ours(w) for w in WORKERS}}
        if 2 not in WORKERS:
            candidates["ours-2"] = ours(2)
            reports[2] = []
        times = interleaved(candidates, reps)
        two, bare = median(times["ours-2"]), median(times["plain"])
        gates = [w.gate_seconds for r in reports[2] for w in r.workers]
        result: list[tuple[str, ...]] = [
            (
                f"ray, 2 workers, {rows:,} rows (s, median of {reps})",
                f"{two:.2f}",
                f"{bare:.2f} (plain map_batches)",
                f"{two / bare:.2f}x (<= 1.15x)",
            ),
            (
                "  parity gate per worker (s, median)",
                f"{median(gates):.2f}",
                "-",
                f"{len(gates) // max(len(reports[2]), 1)} gates per job, run in parallel",
            ),
        ]
        one_worker = median(times[f"ours-{WORKERS[0]}"])
        for workers in WORKERS[1:]:
            took = median(times[f"ours-{workers}"])
            speedup = one_worker / took
            efficiency = speedup / (workers / WORKERS[0])
            result.append(
                (
                    f"ray scaling {WORKERS[0]} -> {workers} workers (s)",
                    f"{took:.2f}",
                    f"{one:.2f}",
                    f"{speedup:.2f}x faster, efficiency {efficiency:.0%}",
                )
            )
        return result
    finally:
        ray.shutdown()


def main(rows: int = ROWS, reps: int = REPS) -> list[tuple[str, ...]]:
    folder = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        started = time.perf_counter()
        bundle = wine_bundle(folder)
        table = local_rows(bundle, folder, rows, reps)
        if os.environ.get("SKIP_RAY") != "1":
            table += ray_rows(bundle, folder, rows, reps)
        print_table(
            f"bundle score: {rows:,} rows of the wine bundle ({time.perf_counter() - started:.0f} s in all)", table
        )
        return table
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
