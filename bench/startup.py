"""Export, start-up and memory against their bare ONNX baselines, measured side by side.

1. ``bundle export`` (torch research outputs, determinism check, dynamo export, ORT
   validation, environment lock, hashing, atomic write) vs bare ``torch.onnx.export``
   of the same model with the same dynamic batch (target <= 2x).
2. ``bundle serve`` start to ready (verify, drift, session, parity check) vs ONNX Runtime
   session creation plus one run of the reference set (target <= 1.5x), both as cold
   processes: after their imports (the server's own ``paritybundle_startup_seconds``), and
   from process start (interpreter and imports included).
3. Resident memory of the ready server vs a process holding only the ORT session after
   one run (target < 1.3x). (That torch never loads in the server is proven by
   ``tests/test_boundary.py``, not here.)
Beside both, the floor: what the prescribed serving libraries cost by themselves.
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

from ._common import interleaved, median, print_table, serve_command

ROOT = Path(__file__).resolve().parent.parent

# Prints its resident size (KiB) and the seconds from the end of its imports to the end of the run.
_BARE = textwrap.dedent("""
    import sys, time, numpy as np, onnxruntime as ort
    imported = time.perf_counter()
    session = ort.InferenceSession(sys.argv[1] + "/pipeline.onnx", providers=["CPUExecutionProvider"])
    with np.load(sys.argv[1] + "/reference/inputs.npz") as z:
        session.run(None, {k: z[k] for k in z.files})
    after_imports = time.perf_counter() - imported
    print(int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]), after_imports)
""")


def run_bare(script: str, bundle: Path) -> tuple[float, int, float]:
    """Run a baseline script: (seconds from process start, resident KiB, seconds after its imports)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, str(bundle)], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    rss, after_imports = done.stdout.split()
    return elapsed, int(rss), float(after_imports)


# The floor: the bare process plus only the libraries the project prescribes for serving
# (pydantic with one model, Starlette, uvicorn with uvloop and httptools, prometheus-client,
# and typer/click for the CLI), imported as the server imports them, without a line of
# paritybundle. No server built on that stack can start faster or hold less than this.
_FLOOR = _BARE.replace(
    "import sys, time, numpy as np, onnxruntime as ort",
    textwrap.dedent("""\
    import sys, time, numpy as np, onnxruntime as ort
    import pydantic, typer, click
    class Probe(pydantic.BaseModel):
        name: str
    Probe(name="x")
    import starlette.applications, starlette.responses, starlette.routing
    import uvicorn, uvicorn.config, uvloop, httptools, prometheus_client"""),
)


def _spec():
    module_spec = importlib.util.spec_from_file_location("digits_train", ROOT / "examples" / "digits" / "train.py")
    train = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(train)
    return train.make_spec(epochs=2)


def _bare_export(spec, path: Path) -> None:
    import torch

    model = spec.model.eval()
    x = torch.from_numpy(spec.reference_inputs["pixels"][:4])
    program = torch.onnx.export(
        model,
        (x,),
        None,
        dynamo=True,
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    assert program is not None, "torch.onnx.export(dynamo=True) returns the program"
    program.save(str(path))


def _rss_kib(pid: int) -> int:
    return int([line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS")][0].split()[1])


def _serve_to_ready(bundle: Path, port: int) -> tuple[float, subprocess.Popen, float]:
    """Start `bundle serve`: (seconds from process start to ready, the process, and the seconds
    from the end of its imports to ready, as its own `paritybundle_startup_seconds` says)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        serve_command(bundle, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        if process.poll() is not None:
            raise SystemExit(f"bundle serve {bundle} exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    elapsed = time.perf_counter() - started
                    break
        except OSError:
            time.sleep(0.005)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    gauge = next(line for line in metrics.splitlines() if line.startswith("paritybundle_startup_seconds "))
    return elapsed, process, float(gauge.split()[1])


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
        times = interleaved(
            {
                "ours": lambda: export_spec(spec, work / "digits", force=True),
                "bare": lambda: _bare_export(spec, work / "bare.onnx"),
            },
            repeats,
        )
        rows.append(
            (
                f"export of the digits CNN (median of {repeats})",
                f"{median(times['ours']):.2f} s",
                f"{median(times['bare']):.2f} s (torch.onnx.export, dynamo)",
                f"{median(times['ours']) / median(times['bare']):.2f}x (<= 2x)",
            )
        )

        rows.extend(measure_serving(work / "digits", "", repeats, 8400, with_floor=True))
    print_table("export, start-up and memory vs bare ONNX baselines", rows)
    return rows


def measure_serving(
    bundle: Path, what: str, repeats: int, port: int, *, with_floor: bool
) -> list[tuple[str, str, str, str]]:
    """`bundle serve` vs the bare process (and the floor), interleaved, each a cold process."""
    ours, bare, floor = [], [], []  # (seconds from process start, resident KiB, seconds after imports)
    for rep in range(repeats):
        elapsed, server, after_imports = _serve_to_ready(bundle, port + rep)
        ours.append((elapsed, _rss_kib(server.pid), after_imports))
        server.terminate()
        server.wait()
        bare.append(run_bare(_BARE, bundle))
        if with_floor:
            floor.append(run_bare(_FLOOR, bundle))
    return serve_rows(what, ours, bare, floor)


def serve_rows(what: str, ours: list, bare: list, floor: list | None = None) -> list[tuple[str, str, str, str]]:
    """The start-up and memory rows from (seconds from process start, resident KiB, seconds after imports)."""
    med = [statistics.median(column) for column in zip(*ours, strict=True)]
    base = [statistics.median(column) for column in zip(*bare, strict=True)]
    rows = [
        (
            f"serve{what}: start-up to ready after imports (cold processes)",
            f"{med[2] * 1000:.1f} ms",
            f"{base[2] * 1000:.1f} ms (session + one run of the references)",
            f"{med[2] / base[2]:.2f}x (<= 1.5x)",
        ),
        (
            f"serve{what}: process start to ready (imports included)",
            f"{med[0]:.2f} s",
            f"{base[0]:.2f} s (python: import ORT, session, run)",
            f"{med[0] / base[0]:.2f}x (<= 1.5x)",
        ),
    ]
    if floor:
        low = [statistics.median(column) for column in zip(*floor, strict=True)]
        rows.append(
            (
                "  floor: the prescribed serving libraries alone, no paritybundle code",
                f"{low[0]:.2f} s",
                "the same bare process",
                f"{low[0] / base[0]:.2f}x",
            )
        )
    rows.append(
        (
            f"serve{what}: resident memory when ready",
            f"{med[1] / 1024:,.0f} MiB",
            f"{base[1] / 1024:,.0f} MiB (process holding only the ORT session)",
            f"{med[1] / base[1]:.2f}x (< 1.3x)",
        )
    )
    if floor:
        rows.append(
            (
                "  floor: the prescribed serving libraries alone, no paritybundle code",
                f"{low[1] / 1024:.0f} MiB",
                "the same bare process",
                f"{low[1] / base[1]:.2f}x",
            )
        )
    return rows


if __name__ == "__main__":
    main()
