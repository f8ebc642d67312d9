"""Smoke runs of the benchmarks' measuring scripts at tiny sizes: they must run and measure
what they say. No timing is asserted here (benchmarks are ratios in `python -m bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scale, startup  # noqa: E402


def _resident_kib(script: str, bundle: Path, *modules: str) -> int:
    probe = script + "".join(f"\nassert {m!r} in sys.modules, 'the script did not import {m}'" for m in modules)
    done = subprocess.run([sys.executable, "-c", probe, str(bundle)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rss, after_imports = done.stdout.split()
    assert 0 < float(after_imports) < 60
    return int(rss)


def test_floor_script_imports_the_serving_stack_and_holds_more_than_the_bare_session(digits_bundle):
    stack = ("pydantic", "starlette.applications", "uvicorn", "uvloop", "httptools", "prometheus_client", "typer")
    bare = _resident_kib(startup._BARE, digits_bundle)
    floor = _resident_kib(startup._FLOOR, digits_bundle, *stack)
    assert "paritybundle" not in startup._FLOOR  # the floor is the libraries alone
    assert floor > bare > 0


def test_serve_rows_report_the_server_own_startup_gauge(digits_bundle):
    elapsed, server, after_imports = startup._serve_to_ready(digits_bundle, 8391)
    try:
        assert 0 < after_imports < elapsed  # the gauge counts from after the imports, inside the whole start
    finally:
        server.terminate()
        server.wait()
    rows = startup.serve_rows("", [(elapsed, 1000, after_imports)], [(elapsed / 2, 800, after_imports / 2)])
    assert [row[3].split("x")[0] for row in rows] == ["2.00", "2.00", "1.25"]


def test_measure_serving_runs_all_three_processes(digits_bundle):
    rows = startup.measure_serving(digits_bundle, "", 1, 8392, with_floor=True)
    assert [row[0].strip().split(":")[0] for row in rows] == ["serve", "serve", "floor", "serve", "floor"]
    assert all(float(row[3].split("x")[0]) > 0 for row in rows)


def test_scale_step_reports_the_resident_size_before_the_measured_call():
    step = scale._step("before = resident()\nblock = bytearray(64 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])")
    assert step["before"] > 0
    assert step["peak"] >= step["before"] + 60 * 2**20  # the 64 MiB touched after `before` shows in the peak


def test_binary_bench_bodies_decode_to_the_same_rows(digits_bundle):
    """Both encodings the binary bench sends carry the same 64 rows (so its ratio compares like with like)."""
    import json

    import numpy as np

    from bench import binary
    from paritybundle.serving import binary as wire_binary

    rows = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    bodies = binary._bodies(rows)
    as_json, _ = bodies["JSON"]
    np.testing.assert_array_equal(np.asarray(json.loads(as_json)["inputs"][0]["data"], np.float32), rows.reshape(-1))
    body, headers = bodies["binary"]
    header, tensor_bytes = wire_binary.split_body(body, headers["Inference-Header-Content-Length"])
    assert json.loads(header)["parameters"] == {"binary_data_output": True}
    decoded = wire_binary.decode_bytes("x", tensor_bytes, "float32", rows.size)
    np.testing.assert_array_equal(decoded, rows.reshape(-1))


def test_capture_bench_counts_cpu_per_process_from_proc():
    """The capture bench's CPU figure is the process's user + system time: it grows while the process works."""
    import os
    import time

    from bench import capture

    before = capture._cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert capture._cpu_seconds(os.getpid()) - before >= 0.2


def test_score_bench_measures_both_sides_and_their_memory(wine_bundle, tmp_path):
    from bench import score as score_bench

    rows = score_bench.local_rows(wine_bundle, tmp_path, 3000, 1)
    timing, gate, memory = rows
    assert timing[0].startswith("local, 3,000 rows") and float(timing[1]) > 0 and float(timing[2].split()[0]) > 0
    assert float(gate[1]) > 0  # the gate's own time, read from the job's report
    assert memory[0].startswith("local peak RSS, 12,000 vs 3,000 rows") and int(memory[1]) > 0 and int(memory[2]) > 0
    bare = tmp_path / "bare.parquet"
    import pyarrow.parquet as pq

    assert pq.read_table(bare).num_rows == 3000  # the baseline did the same job: every row scored and written
