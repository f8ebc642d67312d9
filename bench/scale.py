"""Scale: a ~1 GiB model exported with ONNX external data, and a ~500 MB reference set.

Each step runs in its own process, so its peak resident memory (VmHWM) is its own:
export, verify and check of a generated 1 GiB model (16 x Linear(4096, 4096), float32),
then check of a 100,000-sample reference set (100k x 1280 float32 = 512 MB of inputs).
The ratios are against the size of what the step must handle: the weights, or the
reference arrays (memory must stay near the model size, and flat for references).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from ._common import print_table

_STEP = textwrap.dedent("""
    import json, sys, time
    started = time.perf_counter()
    def resident():
        return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
    exec(sys.argv[1])
    peak = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
    print(json.dumps({"seconds": time.perf_counter() - started, "peak": peak, "before": globals().get("before")}))
""")


def _step(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _STEP, code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"step failed:\\n{code}\\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _baseline_python() -> int:
    """Peak RSS of an interpreter that imported the same libraries and did nothing."""
    return _step("import numpy, onnxruntime, paritybundle, paritybundle.check.checks")["peak"]


def _serve_rows(bundle: Path, weights: int, repeats: int = 3) -> list[tuple[str, str, str, str]]:
    """`bundle serve` of the 1 GiB model vs a process holding only its ORT session, as in
    `startup` for the small model: there the serving stack's fixed cost dominates, here the model."""
    from .startup import measure_serving

    return measure_serving(
        bundle, f" the 1 GiB model (weights {weights / 2**20:,.0f} MiB)", repeats, 8490, with_floor=False
    )


def main() -> list[tuple[str, str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "big"
        weights = 16 * 4096 * 4097 * 4
        export = _step(
            textwrap.dedent(f"""
            import numpy as np, torch, paritybundle
            torch.manual_seed(0)
            layers = []
            for _ in range(16):
                layers += [torch.nn.Linear(4096, 4096), torch.nn.Tanh()]
            model = torch.nn.Sequential(*layers)
            x = np.random.default_rng(0).normal(size=(16, 4096)).astype(np.float32)
            before = resident()  # the training process: torch and the model it trained
            paritybundle.export(model, {str(model)!r}, reference_inputs=x, name="big")
        """)
        )
        base = _baseline_python()
        verify = _step(f"import paritybundle; paritybundle.verify({str(model)!r})")
        check = _step(f"import paritybundle; assert paritybundle.check({str(model)!r}).passed")
        size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        data = [p for p in model.iterdir() if p.name.endswith(".data")]

        def mib(b):
            return f"{b / 2**20:,.0f} MiB"

        rows.append(
            (
                "1 GiB model: export (torch + ONNX external data + ORT validation)",
                f"{export['seconds']:.1f} s, peak {mib(export['peak'])}",
                f"weights {mib(weights)}",
                f"{export['peak'] / weights:.2f}x weights",
            )
        )
        rows.append(
            (
                "  of which export's own, over the training process (torch + the model)",
                f"+{mib(export['peak'] - export['before'])} over {mib(export['before'])}",
                f"weights {mib(weights)}",
                f"{(export['peak'] - export['before']) / weights:.2f}x weights",
            )
        )
        rows.append(
            (
                "1 GiB model: verify (hash every file)",
                f"{verify['seconds']:.1f} s, peak {mib(verify['peak'])}",
                f"bundle {mib(size)}",
                f"{verify['peak'] / size:.2f}x bundle (streamed)",
            )
        )
        rows.append(
            (
                "1 GiB model: check (verify + load + run + compare)",
                f"{check['seconds']:.1f} s, peak {mib(check['peak'])}",
                f"weights {mib(weights)}",
                f"{check['peak'] / weights:.2f}x weights",
            )
        )
        rows.extend(_serve_rows(model, weights))
        rows.append(
            (
                "  external data",
                f"{', '.join(p.name for p in data)}",
                f"model.onnx {mib((model / 'model.onnx').stat().st_size)}",
                "shared by both graphs",
            )
        )

        refs = work / "refs"
        _step(
            textwrap.dedent(f"""
            import numpy as np, torch, paritybundle
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(1280, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
            x = np.random.default_rng(0).normal(size=(100_000, 1280)).astype(np.float32)
            paritybundle.export(model, {str(refs)!r}, reference_inputs=x, name="refs", max_reference_samples=None,
                                exporter="torchscript")
        """)
        )
        arrays = (refs / "reference" / "inputs.npz").stat().st_size + (
            refs / "reference" / "outputs.npz"
        ).stat().st_size
        streamed = _step(f"import paritybundle; assert paritybundle.check({str(refs)!r}).passed")
        rows.append(
            (
                "100k-sample reference set: check, streamed in batches of 1024",
                f"{streamed['seconds']:.1f} s, peak {mib(streamed['peak'])}",
                f"arrays {mib(arrays)}; idle interpreter {mib(base)}",
                f"+{mib(streamed['peak'] - base)} over idle ({(streamed['peak'] - base) / arrays:.2f}x arrays)",
            )
        )
    print_table("scale: large model and large reference set", rows)
    return rows


if __name__ == "__main__":
    main()
