"""`bundle serve` vs MLflow's model server on the same ONNX model, same client, same machine.

Uses ../shared/peer-bench (MLflow venv, the digits MLP, request bodies, load.py). Steps:

1. The peer's digits_mlp.onnx (the very file MLflow serves) is bundled with the research
   outputs of the scikit-learn model it was made from.
2. Start-up, alternating: process start -> first 200 from /v2/health/ready (ours: the
   parity check included) and from /ping (MLflow).
3. Load at concurrency 1, 16, 64, the two servers interleaved (load.py --target x2),
   then ONNX Runtime in-process on one row (the floor).
4. Resident memory of each server after load.

Prerequisites (peer-bench README): `VENV=/tmp/mlflow-venv ../shared/peer-bench/setup_venv.sh`.
Knobs: PEER_BENCH, MLFLOW_VENV, PEER_OUT, DURATION, WARMUP, REPS, START_REPS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ._common import serve_command

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(os.environ.get("PEER_BENCH", ROOT.parent / "shared" / "peer-bench"))
VENV = Path(os.environ.get("MLFLOW_VENV", "/tmp/mlflow-venv"))
OUT = Path(os.environ.get("PEER_OUT", "/tmp/peer"))
DURATION, WARMUP, REPS = os.environ.get("DURATION", "10"), os.environ.get("WARMUP", "3"), os.environ.get("REPS", "3")
START_REPS = int(os.environ.get("START_REPS", "3"))
OUR_PORT, MLFLOW_PORT = 8391, 5055


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status
    except Exception:
        return 0


def _start(command: list[str], url: str, env: dict | None = None) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    while _get(url) != 200:
        if process.poll() is not None:
            raise SystemExit(f"{command[0]} exited with {process.returncode}")
        if time.perf_counter() - started > 120:
            raise SystemExit(f"{url} not healthy after 120 s")
        time.sleep(0.02)
    return process, time.perf_counter() - started


def _stop(process: subprocess.Popen) -> None:
    # The whole process group: MLflow's CLI execs uvicorn in a child.
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _bundle(directory: Path) -> Path:
    sys.path.insert(0, str(PEER))
    import make_model  # the peer's own training code: same data, same seed

    from paritybundle.training import ExportSpec, export_spec

    clf, x, _ = make_model.train()
    research = clf.predict_proba(x / 16.0).astype("float32")
    spec = ExportSpec(
        model=str(OUT / "digits_mlp.onnx"),
        reference_inputs={"x": x},
        research_outputs={"probabilities": research},
        name="digits_mlp",
        max_reference_samples=None,
    )
    return export_spec(spec, directory / "digits_mlp").path


def _assert_same_model(ours: Path, theirs: Path) -> None:
    """MLflow re-serialises the file when saving it: compare graphs and weights, not bytes."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(ours)), onnx.load(str(theirs))
    assert a.graph.node == b.graph.node and a.graph.input == b.graph.input and a.graph.output == b.graph.output
    assert [i.name for i in a.graph.initializer] == [i.name for i in b.graph.initializer]
    for x, y in zip(a.graph.initializer, b.graph.initializer, strict=True):
        assert np.array_equal(numpy_helper.to_array(x), numpy_helper.to_array(y)), x.name


def main() -> None:
    if not (VENV / "bin" / "mlflow").exists():
        raise SystemExit(f"no MLflow venv at {VENV}; run VENV={VENV} {PEER}/setup_venv.sh first")
    if not (OUT / "mlflow_digits_mlp" / "MLmodel").exists():
        subprocess.run([str(VENV / "bin" / "python"), str(PEER / "make_model.py"), "--out", str(OUT)], check=True)
    work = Path(tempfile.mkdtemp(prefix="pb-serving-bench-"))
    try:
        bundle = _bundle(work)
        _assert_same_model(bundle / "pipeline.onnx", OUT / "mlflow_digits_mlp" / "model.onnx")

        ours_cmd = serve_command(bundle, OUR_PORT)
        mlflow_env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}"}
        theirs_cmd = [
            str(VENV / "bin" / "mlflow"),
            "models",
            "serve",
            "-m",
            str(OUT / "mlflow_digits_mlp"),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(MLFLOW_PORT),
        ]
        starts: dict[str, list[float]] = {"paritybundle": [], "mlflow": []}
        for rep in range(START_REPS):
            ours, t_ours = _start(ours_cmd, f"http://127.0.0.1:{OUR_PORT}/v2/health/ready")
            theirs, t_theirs = _start(theirs_cmd, f"http://127.0.0.1:{MLFLOW_PORT}/ping", mlflow_env)
            starts["paritybundle"].append(t_ours)
            starts["mlflow"].append(t_theirs)
            if rep < START_REPS - 1:
                _stop(ours)
                _stop(theirs)
        jsonl = work / "load.jsonl"
        load = [sys.executable, str(PEER / "load.py")]
        subprocess.run(
            [
                *load,
                "http",
                "-c",
                "1,16,64",
                "--reps",
                REPS,
                "-d",
                DURATION,
                "-w",
                WARMUP,
                "--jsonl",
                str(jsonl),
                "--target",
                "paritybundle",
                f"http://127.0.0.1:{OUR_PORT}/v2/models/digits_mlp/infer",
                str(OUT / "body_v2_1.json"),
                "--target",
                "mlflow",
                f"http://127.0.0.1:{MLFLOW_PORT}/invocations",
                str(OUT / "body_invocations_1.json"),
            ],
            check=True,
        )
        rss_ours = _rss_mib([ours.pid])
        uvicorn = _children(theirs.pid) or [theirs.pid]  # the CLI parent is excluded, as peer-bench does
        rss_theirs = _rss_mib(uvicorn + [c for pid in uvicorn for c in _children(pid)])
        _stop(ours)
        _stop(theirs)
        subprocess.run(
            [
                *load,
                "ort",
                "--model",
                str(OUT / "digits_mlp.onnx"),
                "--row",
                str(OUT / "row.json"),
                "--threads",
                "0",
                "--reps",
                REPS,
                "-d",
                "5",
                "-w",
                "2",
                "--jsonl",
                str(jsonl),
            ],
            check=True,
        )
        _report(jsonl, starts, rss_ours, rss_theirs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _report(jsonl: Path, starts: dict[str, list[float]], rss_ours: float, rss_theirs: float) -> None:
    runs = [json.loads(line) for line in jsonl.read_text().splitlines()]

    def med(label: str, key: str, concurrency: int | None = None) -> float:
        values = [
            r[key]
            for r in runs
            if r["label"].startswith(label) and (concurrency is None or r.get("concurrency") == concurrency)
        ]
        return statistics.median(values)

    floor_p50 = med("ort", "p50_ms")
    print("\n## bundle serve vs MLflow model server (same ONNX model, same client, interleaved)\n")
    print("| measure | paritybundle | MLflow | ratio (target) |")
    print("| --- | --- | --- | --- |")
    for c in (1, 16, 64):
        ours, theirs = med("paritybundle", "rps", c), med("mlflow", "rps", c)
        print(
            f"| throughput, concurrency {c} | {ours:.0f} req/s | {theirs:.0f} req/s | {ours / theirs:.1f}x"
            + (" (>= 5x, batching on)" if c == 64 else "")
            + " |"
        )
        print(
            f"| p50 / p99 latency, concurrency {c} | {med('paritybundle', 'p50_ms', c):.2f} / "
            f"{med('paritybundle', 'p99_ms', c):.2f} ms | {med('mlflow', 'p50_ms', c):.2f} / "
            f"{med('mlflow', 'p99_ms', c):.2f} ms | |"
        )
    p50 = med("paritybundle", "p50_ms", 1)
    print(
        f"| p50 at concurrency 1 vs in-process ORT ({floor_p50:.3f} ms) | +{p50 - floor_p50:.2f} ms | "
        f"+{med('mlflow', 'p50_ms', 1) - floor_p50:.2f} ms | (<= +1 ms) |"
    )
    s_ours, s_theirs = statistics.median(starts["paritybundle"]), statistics.median(starts["mlflow"])
    print(
        f"| start to ready (median of {len(starts['mlflow'])}; ours includes the parity check) | {s_ours:.2f} s | "
        f"{s_theirs:.2f} s | {s_ours / s_theirs:.2f}x (< 0.33x) |"
    )
    print(
        f"| resident memory after load | {rss_ours:.0f} MiB | {rss_theirs:.0f} MiB | "
        f"{rss_ours / rss_theirs:.2f}x (< 0.5x) |"
    )


if __name__ == "__main__":
    main()
