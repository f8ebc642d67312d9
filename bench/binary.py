"""Binary tensors vs JSON on the same server, same model, same client (issue 16's target: >= 2x rows/s).

A 64 -> 128 -> 10 MLP (digits-sized) is built as ONNX and bundled; one `bundle serve` answers
64-row requests at concurrency 16 from a closed-loop aiohttp client, the two encodings interleaved
over REPS rounds so host drift hits both alike:

* JSON: ``data`` as a flat list of numbers, the answer as JSON (what load.py and MLflow's clients send);
* binary: tritonclient's defaults, the tensor bytes after the JSON header
  (``Inference-Header-Content-Length``) and the answer's bytes likewise (``binary_data_output``).

Knobs: DURATION (s per run, 8), WARMUP (s, 2), REPS (3), ROWS (64), CONCURRENCY (16).
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

DURATION, WARMUP = float(os.environ.get("DURATION", "8")), float(os.environ.get("WARMUP", "2"))
REPS, ROWS, CONCURRENCY = (
    int(os.environ.get("REPS", "3")),
    int(os.environ.get("ROWS", "64")),
    int(os.environ.get("CONCURRENCY", "16")),
)
PORT = 8397


def _mlp_bundle(folder: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from paritybundle.training import ExportSpec, export_spec

    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(0, 0.2, (64, 128)).astype(np.float32), rng.normal(0, 0.1, 128).astype(np.float32)
    w2, b2 = rng.normal(0, 0.2, (128, 10)).astype(np.float32), rng.normal(0, 0.1, 10).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "mlp.onnx"))
    x = rng.random((256, 64)).astype(np.float32) * 16
    z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    research = np.exp(z - z.max(axis=1, keepdims=True))
    research = (research / research.sum(axis=1, keepdims=True)).astype(np.float32)
    spec = ExportSpec(
        model=str(folder / "mlp.onnx"),
        reference_inputs={"x": x},
        research_outputs={"probabilities": research},
        name="mlp",
    )
    return export_spec(spec, folder / "bundle").path


def _bodies(rows: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    import orjson

    as_json = orjson.dumps(
        {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32", "data": rows.reshape(-1).tolist()}]}
    )
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return {
        "JSON": (as_json, {"Content-Type": "application/json"}),
        "binary": (
            header + rows.tobytes(),
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        ),
    }


async def _load(url: str, body: bytes, headers: dict[str, str]) -> float:
    """Requests per second, closed loop: CONCURRENCY clients, WARMUP s, then DURATION s measured."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async with session.post(url, data=body, headers=headers) as first:
            if first.status != 200:
                raise SystemExit(f"{url} answered {first.status}: {(await first.read())[:200]!r}")
            await first.read()
        clock = time.perf_counter
        start = clock() + WARMUP
        end = start + DURATION
        done = 0

        async def client() -> None:
            nonlocal done
            while (began := clock()) < end:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                if ok and began >= start and clock() <= end:
                    done += 1

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return done / DURATION


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pb-binary-bench-"))
    server = None
    try:
        bundle = _mlp_bundle(work)
        server = subprocess.Popen(
            serve_command(bundle, PORT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(PORT, server)
        rows = np.random.default_rng(1).random((ROWS, 64)).astype(np.float32) * 16
        bodies = _bodies(rows)
        url = f"http://127.0.0.1:{PORT}/v2/models/mlp/infer"
        rates: dict[str, list[float]] = {name: [] for name in bodies}
        for _ in range(REPS):  # interleaved: JSON, binary, JSON, binary, ...
            for name, (body, headers) in bodies.items():
                rates[name].append(asyncio.run(_load(url, body, headers)) * ROWS)
        json_rows, binary_rows = statistics.median(rates["JSON"]), statistics.median(rates["binary"])
        size = {name: len(body) for name, (body, _) in bodies.items()}
        print_table(
            f"binary tensors vs JSON: {ROWS}-row requests, concurrency {CONCURRENCY}, median of {REPS}",
            [
                (
                    "rows/s",
                    f"{binary_rows:,.0f} (binary)",
                    f"{json_rows:,.0f} (JSON)",
                    f"{binary_rows / json_rows:.2f}x (>= 2x)",
                ),
                (
                    "request body",
                    f"{size['binary']:,} B",
                    f"{size['JSON']:,} B",
                    f"{size['binary'] / size['JSON']:.2f}x",
                ),
                (
                    "runs (rows/s)",
                    " / ".join(f"{r:,.0f}" for r in rates["binary"]),
                    " / ".join(f"{r:,.0f}" for r in rates["JSON"]),
                    "-",
                ),
            ],
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
