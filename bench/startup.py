"""Export, start-up and memory against their bare ONNX baselines, measured side by side.

1. ``bundle export`` (torch research outputs, determinism check, dynamo export, ORT
   validation, environment lock, hashing, atomic write) vs bare ``torch.onnx.export``
   of the same model with the same dynamic batch (target <= 2x).
2. ``bundle serve`` start to ready (verify, drift, session, parity check) vs ONNX Runtime
   session creation plus one run of the reference set (target <= 1.5x): as whole
   processes (interpreter and imports included), and in-process (after imports).
3. Resident memory of the ready server vs a process holding only the ORT session after
   one run (target < 1.3x), and proof that torch never loaded in the server.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from ._common import interleaved, median, print_table

ROOT = Path(__file__).resolve().parent.parent

_BARE = textwrap.dedent("""
    import sys, numpy as np, onnxruntime as ort
    session = ort.InferenceSession(sys.argv[1] + "/pipeline.onnx", providers=["CPUExecutionProvider"])
    with np.load(sys.argv[1] + "/reference/inputs.npz") as z:
        session.run(None, {k: z[k] for k in z.files})
    print(int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]))
    if len(sys.argv) > 2:
        sys.stdin.readline()
""")

# The floor: the bare process plus only the libraries the project prescribes for serving
# (pydantic with one model, Starlette, uvicorn with uvloop and httptools, prometheus-client,
# and typer/click for the CLI), imported as the server imports them, without a line of
# paritybundle. No server built on that stack can start faster or hold less than this.
_FLOOR = _BARE.replace("import sys, numpy as np, onnxruntime as ort", textwrap.dedent("""\
    import sys, numpy as np, onnxruntime as ort
    import pydantic, typer, click
    class Probe(pydantic.BaseModel):
        name: str
    Probe(name="x")
    import starlette.applications, starlette.responses, starlette.routing
    import uvicorn, uvicorn.config, uvloop, httptools, prometheus_client"""))


def _spec():
    module_spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples" / "digits" / "train.py")
    train = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(train)
    return train.make_spec(epochs=2)


def _bare_export(spec, path: Path) -> None:
    import torch

    model = spec.model.eval()
    x = torch.from_numpy(spec.reference_inputs["pixels"][:4])
    program = torch.onnx.export(model, (x,), None, dynamo=True, input_names=["pixels"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.save(str(path))


def _rss_kib(pid: int) -> int:
    return int([line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS")][0].split()[1])


def _serve_to_ready(bundle: Path, port: int) -> tuple[float, subprocess.Popen]:
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "paritybundle.cli", "serve", str(bundle), "--port", str(port),
                                "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started, process
        except OSError:
            time.sleep(0.005)


def main(repeats: int = 5) -> list[tuple[str, str, str, str]]:
    import logging

    from paritybundle.training import export_spec

    logging.getLogger("paritybundle").setLevel(logging.ERROR)
    rows = []
    spec = _spec()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_spec(spec, work / "warm", force=True)  # the exporter's first call pays its own warm-up
        _bare_export(spec, work / "warm.onnx")
        times = interleaved({
            "ours": lambda: export_spec(spec, work / "digits", force=True),
            "bare": lambda: _bare_export(spec, work / "bare.onnx"),
        }, repeats)
        rows.append((f"export of the digits CNN (median of {repeats})", f"{median(times['ours']):.2f} s",
                     f"{median(times['bare']):.2f} s (torch.onnx.export, dynamo)",
                     f"{median(times['ours']) / median(times['bare']):.2f}x (<= 2x)"))

        bundle = work / "digits"
        ours_start, bare_start, ours_rss, bare_rss, floor_start, floor_rss = [], [], [], [], [], []
        for rep in range(repeats):
            elapsed, server = _serve_to_ready(bundle, 8400 + rep)
            ours_start.append(elapsed)
            ours_rss.append(_rss_kib(server.pid))
            server.terminate()
            server.wait()
            started = time.perf_counter()
            bare = subprocess.run([sys.executable, "-c", _BARE, str(bundle)], capture_output=True, text=True, check=True)
            bare_start.append(time.perf_counter() - started)
            bare_rss.append(int(bare.stdout.strip()))
            started = time.perf_counter()
            floor = subprocess.run([sys.executable, "-c", _FLOOR, str(bundle)], capture_output=True, text=True, check=True)
            floor_start.append(time.perf_counter() - started)
            floor_rss.append(int(floor.stdout.strip()))
        rows.append(("serve: process start to ready (imports included)", f"{statistics.median(ours_start):.2f} s",
                     f"{statistics.median(bare_start):.2f} s (python: import ORT, session, run references)",
                     f"{statistics.median(ours_start) / statistics.median(bare_start):.2f}x (<= 1.5x)"))
        rows.append(("  floor: the prescribed serving libraries alone, no paritybundle code",
                     f"{statistics.median(floor_start):.2f} s", "the same bare process",
                     f"{statistics.median(floor_start) / statistics.median(bare_start):.2f}x"))

        import asyncio

        import numpy as np
        import onnxruntime as ort

        from paritybundle.serving.app import ServeOptions, create_app

        async def app_ready() -> float:
            app = create_app(ServeOptions(bundle=str(bundle)))
            started = time.perf_counter()
            async with app.router.lifespan_context(app):
                assert app.state.server.ready
                return time.perf_counter() - started

        def bare_in_process() -> None:
            session = ort.InferenceSession(str(bundle / "pipeline.onnx"), providers=["CPUExecutionProvider"])
            with np.load(bundle / "reference" / "inputs.npz") as z:
                session.run(None, {k: z[k] for k in z.files})

        ours_in, bare_in = [], []
        for _ in range(repeats):
            ours_in.append(asyncio.run(app_ready()))
            started = time.perf_counter()
            bare_in_process()
            bare_in.append(time.perf_counter() - started)
        rows.append(("serve: start-up to ready in-process (after imports)", f"{median(ours_in) * 1000:.1f} ms",
                     f"{median(bare_in) * 1000:.1f} ms (session + one run of the references)",
                     f"{median(ours_in) / median(bare_in):.2f}x (<= 1.5x)"))
        rows.append(("serve: resident memory when ready", f"{statistics.median(ours_rss) / 1024:.0f} MiB",
                     f"{statistics.median(bare_rss) / 1024:.0f} MiB (process holding only the ORT session)",
                     f"{statistics.median(ours_rss) / statistics.median(bare_rss):.2f}x (< 1.3x)"))
        rows.append(("  floor: the prescribed serving libraries alone, no paritybundle code",
                     f"{statistics.median(floor_rss) / 1024:.0f} MiB", "the same bare process",
                     f"{statistics.median(floor_rss) / statistics.median(bare_rss):.2f}x"))
    print_table("export, start-up and memory vs bare ONNX baselines", rows)
    return rows


if __name__ == "__main__":
    main()
