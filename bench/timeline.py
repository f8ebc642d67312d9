"""Where a slow request's time goes (issue 29): one request at the p99 of server time against one at the p50.

Runs `bundle serve` on the peer's digits MLP in this process's child with every stage of ``infer`` timed
(read the body, decode and validate, wait in the batcher's queue and run ONNX Runtime, encode the answer)
and every garbage collection recorded (generation, start, end). A closed-loop client at CONCURRENCY loads
it; the child then writes the timeline, and this prints the breakdown of the median and the p99 request,
the collections that overlapped each, and the pauses per generation. With ``SETTLE=0`` the start-up heap
is left as CPython leaves it (what this tree did before: no ``gc.freeze``), to show the difference.

Knobs: CONCURRENCY (64), DURATION (8), WARMUP (2), SETTLE (1). Prerequisite: make_model.py --out /tmp/peer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from .serving import OUT, _bundle, _start
from .tail import _latencies

CONCURRENCY = int(os.environ.get("CONCURRENCY", "64"))
SETTLE = os.environ.get("SETTLE", "1") != "0"
PORT = 8395

CHILD = textwrap.dedent("""
    import contextvars, gc, json, signal, sys, time
    from paritybundle.serving import handlers, state as state_module
    from paritybundle.serving.batching import MicroBatcher
    if not {settle}:
        state_module._settle_garbage_collection = lambda: None
    clock = time.perf_counter
    requests, collections, started = [], [], {{}}
    def on_gc(phase, info):
        if phase == "start":
            started["t"] = clock()
        else:
            collections.append((info["generation"], started["t"], clock()))
    gc.callbacks.append(on_gc)
    read_body, decode_body, infer, submit = handlers.read_body, handlers.decode_body, handlers.infer, MicroBatcher.submit
    current = contextvars.ContextVar("timeline")  # each request is a task of its own, with its own context
    async def timed_read(*args, **kwargs):
        body = await read_body(*args, **kwargs)
        current.get()["read"] = clock()
        return body
    def timed_decode(*args, **kwargs):
        result = decode_body(*args, **kwargs)
        current.get()["decoded"] = clock()
        return result
    async def timed_submit(self, inputs):
        outputs = await submit(self, inputs)
        current.get()["answered"] = clock()
        return outputs
    async def timed_infer(request):
        stamps = {{"enter": clock()}}
        current.set(stamps)
        response = await infer(request)
        stamps["done"] = clock()
        requests.append(stamps)
        return response
    handlers.read_body, handlers.decode_body, MicroBatcher.submit = timed_read, timed_decode, timed_submit
    import paritybundle.serving.app as app
    app.ROUTES[:] = [r if getattr(r, "endpoint", None) is not infer else type(r)(r.path, timed_infer, methods=["POST"])
                     for r in app.ROUTES]
    def dump(*_):
        with open({out!r}, "w") as sink:
            json.dump({{"requests": requests, "collections": collections}}, sink)
        sys.exit(0)
    signal.signal(signal.SIGUSR1, dump)
    from paritybundle.cli import main
    main(["serve", {bundle!r}, "--port", "{port}", "--log-level", "warning"])
""")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pb-timeline-"))
    process = None
    try:
        bundle = _bundle(work)
        out = work / "timeline.json"
        script = CHILD.format(settle=SETTLE, out=str(out), bundle=str(bundle), port=PORT)
        process, _ = _start([sys.executable, "-c", script], f"http://127.0.0.1:{PORT}/v2/health/ready")
        body = (OUT / "body_v2_1.json").read_bytes()
        rate, client = asyncio.run(_latencies(f"http://127.0.0.1:{PORT}/v2/models/digits_mlp/infer", body, CONCURRENCY))
        process.send_signal(__import__("signal").SIGUSR1)
        process.wait(timeout=60)
        timeline = json.loads(out.read_text())
        _report(timeline, rate, client)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["true"], check=False)


def _report(timeline: dict, rate: float, client: np.ndarray) -> None:
    requests = [r for r in timeline["requests"] if {"enter", "read", "decoded", "answered", "done"} <= set(r)]
    collections = timeline["collections"]
    totals = np.array([r["done"] - r["enter"] for r in requests])
    order = np.argsort(totals)
    print(f"\n## request timeline, concurrency {CONCURRENCY}, gc settled after start-up: {SETTLE}\n")
    print(
        f"client: {rate:,.0f} req/s, latency p50 {np.percentile(client, 50):.2f} ms, p99 "
        f"{np.percentile(client, 99):.2f} ms; server time (infer) p50 {np.percentile(totals, 50) * 1e3:.2f} ms, "
        f"p99 {np.percentile(totals, 99) * 1e3:.2f} ms\n"
    )
    print(
        "| request | read body | decode + validate | queue + batch + ORT | encode answer | total | "
        "collections overlapping |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, rank in (("median", 0.50), ("p99", 0.99)):
        r = requests[order[int(rank * (len(order) - 1))]]
        stages = [
            r["read"] - r["enter"],
            r["decoded"] - r["read"],
            r["answered"] - r["decoded"],
            r["done"] - r["answered"],
            r["done"] - r["enter"],
        ]
        overlapping = [(g, e - s) for g, s, e in collections if s < r["done"] and e > r["enter"]]
        paused = ", ".join(f"gen{g} {d * 1e3:.2f} ms" for g, d in overlapping) or "none"
        print(f"| {label} | " + " | ".join(f"{t * 1e3:.3f} ms" for t in stages) + f" | {paused} |")
    print("\n| generation | collections under load | total ms | max ms |")
    print("| --- | --- | --- | --- |")
    first = requests[0]["enter"] if requests else 0.0
    for generation in (0, 1, 2):
        pauses = [e - s for g, s, e in collections if g == generation and s >= first]
        if pauses:
            print(f"| {generation} | {len(pauses)} | {sum(pauses) * 1e3:.1f} | {max(pauses) * 1e3:.2f} |")
