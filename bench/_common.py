"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, a table."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run every candidate once per round, ``repeats`` rounds, so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(
    title: str,
    rows: Sequence[tuple[str, ...]],
    header: tuple[str, ...] = ("measure", "paritybundle", "baseline", "ratio (target)"),
) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def serve_command(bundle: Path, port: int, *extra: str) -> list[str]:
    """``bundle serve`` on ``port`` as every benchmark starts it: this interpreter, warnings only in its log."""
    return [
        sys.executable,
        "-m",
        "paritybundle.cli",
        "serve",
        str(bundle),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the `bundle serve` process on ``port`` answers ready (or exit the bench saying it did not)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("bundle serve did not become ready")
        time.sleep(0.1)
