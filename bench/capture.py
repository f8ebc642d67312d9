"""Captured traffic's cost to serving (issue 19's budget: capture-rate 1.0 within 10% of capture off).

Three `bundle serve` processes of the same bundle (the digits-sized MLP of ``bench binary``):
capture off, ``--capture-rate 1.0`` and ``0.1``; a closed-loop aiohttp client sends 1-row JSON
requests at concurrency 64 to one of them at a time, interleaved over REPS rounds so host drift
hits all alike. Each server's CPU time per request (all its threads, from /proc) is reported
beside its throughput. Afterwards the full capture is read back: every answered request must be
in it.

With ``BASELINE_SRC`` (another checkout's ``src``, e.g. ``git worktree add /tmp/base <commit>``), two
more servers run that code (capture off and 1.0), interleaved with the rest: this tree's serving and
capture against the baseline's, in the same sitting.

Knobs: DURATION (s per run, 8), WARMUP (s, 2), REPS (3), CONCURRENCY (64), BASELINE_SRC.
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

from ._common import print_table, serve_command, wait_ready
from .binary import _mlp_bundle

DURATION, WARMUP = float(os.environ.get("DURATION", "8")), float(os.environ.get("WARMUP", "2"))
REPS, CONCURRENCY = int(os.environ.get("REPS", "3")), int(os.environ.get("CONCURRENCY", "64"))
PORTS = {"capture off": 8398, "capture 1.0": 8399, "capture 0.1": 8400}
BASELINE = os.environ.get("BASELINE_SRC")
if BASELINE:
    PORTS.update({"baseline off": 8401, "baseline 1.0": 8402})


async def _load(url: str, body: bytes) -> tuple[float, int]:
    """(requests per second over DURATION, requests answered 200 in all) with CONCURRENCY clients."""
    import aiohttp

    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        clock = time.perf_counter
        start = clock() + WARMUP
        end = start + DURATION
        done = answered = 0

        async def client() -> None:
            nonlocal done, answered
            while (began := clock()) < end:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                answered += ok
                if ok and began >= start and clock() <= end:
                    done += 1

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return done / DURATION, answered


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    import orjson

    work = Path(tempfile.mkdtemp(prefix="pb-capture-bench-"))
    servers: dict[str, subprocess.Popen] = {}
    try:
        bundle = _mlp_bundle(work)
        capture_dir = work / "capture"
        for name, port in PORTS.items():
            capture_rate = name.split()[-1]
            folder = capture_dir if name == "capture 1.0" else work / name.replace(" ", "-")
            extra = ["--capture", str(folder), "--capture-rate", capture_rate] if capture_rate != "off" else []
            env = {**os.environ, "PYTHONPATH": str(BASELINE)} if name.startswith("baseline") else None
            servers[name] = subprocess.Popen(
                serve_command(bundle, port, *extra),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        for name, port in PORTS.items():
            wait_ready(port, servers[name])
        row = np.random.default_rng(1).random((1, 64)).astype(np.float32) * 16
        body = orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": row.reshape(-1).tolist()}]}
        )
        rates: dict[str, list[float]] = {name: [] for name in PORTS}
        cpu: dict[str, list[float]] = {name: [] for name in PORTS}  # server CPU seconds per request
        answered = 0
        for _ in range(REPS):
            for name, port in PORTS.items():
                before = _cpu_seconds(servers[name].pid)
                rate, count = asyncio.run(_load(f"http://127.0.0.1:{port}/v2/models/mlp/infer", body))
                cpu[name].append((_cpu_seconds(servers[name].pid) - before) / max(count, 1))
                rates[name].append(rate)
                answered += count if name == "capture 1.0" else 0
        servers["capture 1.0"].terminate()  # a graceful stop writes what is queued and completes the file
        servers["capture 1.0"].wait(timeout=60)
        import pyarrow.parquet as pq

        captured = sum(pq.read_metadata(f).num_rows for f in capture_dir.glob("capture-*.parquet"))
        off, on = statistics.median(rates["capture off"]), statistics.median(rates["capture 1.0"])
        sampled = statistics.median(rates["capture 0.1"])
        cpu_off, cpu_on = statistics.median(cpu["capture off"]) * 1e6, statistics.median(cpu["capture 1.0"]) * 1e6
        cpu_sampled = statistics.median(cpu["capture 0.1"]) * 1e6
        print_table(
            f"capture cost: 1-row JSON requests, concurrency {CONCURRENCY}, median of {REPS}",
            [
                ("requests/s", f"{on:,.0f} (capture 1.0)", f"{off:,.0f} (capture off)", f"{on / off:.3f}x (>= 0.90x)"),
                (
                    "requests/s, capture 0.1",
                    f"{sampled:,.0f} (capture 0.1)",
                    f"{off:,.0f} (capture off)",
                    f"{sampled / off:.2f}x",
                ),
                (
                    "server CPU per request",
                    f"{cpu_on:.0f} us (1.0), {cpu_sampled:.0f} us (0.1)",
                    f"{cpu_off:.0f} us",
                    f"{cpu_on - cpu_off:+.0f} us (1.0)",
                ),
                (
                    "runs (requests/s)",
                    " / ".join(f"{r:,.0f}" for r in rates["capture 1.0"]),
                    " / ".join(f"{r:,.0f}" for r in rates["capture off"]),
                    "-",
                ),
                (
                    "captured / answered",
                    f"{captured:,}",
                    f"{answered:,}",
                    "every one" if captured == answered else "MISSING",
                ),
            ],
        )
        if BASELINE:
            base_off, base_on = statistics.median(rates["baseline off"]), statistics.median(rates["baseline 1.0"])
            print_table(
                f"this tree vs the baseline ({BASELINE}), same sitting, median of {REPS}",
                [
                    ("requests/s, capture off", f"{off:,.0f}", f"{base_off:,.0f}", f"{off / base_off:.3f}x (>= 0.97x)"),
                    ("requests/s, capture 1.0", f"{on:,.0f}", f"{base_on:,.0f}", f"{on / base_on:.3f}x (>= 0.97x)"),
                    (
                        "capture budget (1.0 / off)",
                        f"{on / off:.3f}x",
                        f"{base_on / base_off:.3f}x",
                        f"{(on / off) / (base_on / base_off):.3f}x",
                    ),
                    *(
                        (
                            f"server CPU per request, {kind}",
                            f"{statistics.median(cpu[ours]) * 1e6:.0f} us",
                            f"{statistics.median(cpu[theirs]) * 1e6:.0f} us",
                            f"{statistics.median(cpu[ours]) / statistics.median(cpu[theirs]):.3f}x (<= 1.03x)",
                        )
                        for kind, ours, theirs in (
                            ("capture off", "capture off", "baseline off"),
                            ("capture 1.0", "capture 1.0", "baseline 1.0"),
                        )
                    ),
                ],
            )
    finally:
        for process in servers.values():
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
