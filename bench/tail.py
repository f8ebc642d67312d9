"""Serving latency percentiles beside MLServer's (issue 29: p99 <= 2x p50 at concurrency 64, 1-row requests).

The peer's digits MLP (../shared/peer-bench) is bundled and served by `bundle serve`; MLServer 1.7.1 serves
the same .onnx through its onnxruntime runtime (peer-bench/mlserver, its fastest configuration here). With
``BASELINE_SRC`` (another checkout's ``src``), a third server runs that code: this tree against the baseline
in the same sitting. One closed-loop aiohttp client per run records every request's latency; the servers
are interleaved rep by rep at each concurrency so host drift hits all alike. Reported per server and
concurrency: requests/s, p50/p90/p99/p99.9 and p99/p50 (medians over reps).

Prerequisites: ``make_model.py --out /tmp/peer`` and the MLServer venv (peer-bench/mlserver/setup_and_run.sh
makes it at /tmp/mlserver-venv on first run). Knobs: DURATION (s, 8), WARMUP (s, 2), REPS (3),
TAIL_CONCURRENCY ("1,16,64"), PEER_OUT (/tmp/peer), MLSERVER_VENV, BASELINE_SRC.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ._common import print_table, serve_command
from .serving import OUT, PEER, _bundle, _start, _stop

DURATION, WARMUP = float(os.environ.get("DURATION", "8")), float(os.environ.get("WARMUP", "2"))
REPS = int(os.environ.get("REPS", "3"))
CONCURRENCY = [int(c) for c in os.environ.get("TAIL_CONCURRENCY", "1,16,64").split(",")]
MLSERVER_VENV = Path(os.environ.get("MLSERVER_VENV", "/tmp/mlserver-venv"))
BASELINE = os.environ.get("BASELINE_SRC")
PORTS = {"paritybundle": 8393, "mlserver": 8180, "baseline": 8394}
PERCENTILES = (50, 90, 99, 99.9)


async def _latencies(url: str, body: bytes, concurrency: int) -> tuple[float, np.ndarray]:
    """(requests/s, each request's latency in ms) of ``concurrency`` closed-loop clients over DURATION."""
    import aiohttp

    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        clock = time.perf_counter
        start = clock() + WARMUP
        end = start + DURATION
        measured: list[float] = []

        async def client() -> None:
            while (began := clock()) < end:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"{url} answered {response.status}")
                done = clock()
                if began >= start and done <= end:
                    measured.append(done - began)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(measured) / DURATION, np.array(measured) * 1e3


def main() -> None:
    if not (OUT / "digits_mlp.onnx").exists():
        raise SystemExit(f"no {OUT / 'digits_mlp.onnx'}; run {PEER / 'make_model.py'} --out {OUT} first")
    work = Path(tempfile.mkdtemp(prefix="pb-tail-bench-"))
    processes = []
    try:
        bundle = _bundle(work)
        commands = {
            "paritybundle": (
                serve_command(bundle, PORTS["paritybundle"]),
                None,
            ),
            "mlserver": (
                ["bash", str(PEER / "mlserver" / "setup_and_run.sh")],
                {**os.environ, "VENV": str(MLSERVER_VENV)},
            ),
        }
        if BASELINE:
            commands["baseline"] = (
                serve_command(bundle, PORTS["baseline"]),
                {**os.environ, "PYTHONPATH": BASELINE},
            )
        for name, (command, env) in commands.items():
            process, _ = _start(command, f"http://127.0.0.1:{PORTS[name]}/v2/health/ready", env)
            processes.append(process)
        body = (OUT / "body_v2_1.json").read_bytes()
        results: dict[tuple[str, int], list[tuple[float, np.ndarray]]] = {}
        for concurrency in CONCURRENCY:
            for _ in range(REPS):
                for name in commands:
                    url = f"http://127.0.0.1:{PORTS[name]}/v2/models/digits_mlp/infer"
                    results.setdefault((name, concurrency), []).append(asyncio.run(_latencies(url, body, concurrency)))
        rows = []
        for (name, concurrency), runs in results.items():
            rate = statistics.median(r for r, _ in runs)
            cuts = {p: statistics.median(float(np.percentile(lat, p)) for _, lat in runs) for p in PERCENTILES}
            rows.append(
                (
                    f"{name}, c={concurrency}",
                    f"{rate:,.0f}",
                    *(f"{cuts[p]:.2f}" for p in PERCENTILES),
                    f"{cuts[99] / cuts[50]:.2f}x",
                )
            )
        print_table(
            f"latency (ms) of 1-row JSON requests, medians of {REPS} interleaved runs of {DURATION:g} s",
            rows,
            header=("server, concurrency", "req/s", "p50", "p90", "p99", "p99.9", "p99/p50"),
        )
    finally:
        for process in processes:
            _stop(process)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["pkill", "-f", "mlserver start"], check=False)
