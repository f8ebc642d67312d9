"""`check()` over 10,000 digits reference samples vs a bare ONNX Runtime loop (asked: <= 1.10x; the floor row shows why it is out of reach).

Both start from the same files on disk and do the same inference work: read the
reference inputs, build a session with the same settings, run the same batches.
`check()` additionally verifies every file's sha256, validates the inputs, reads
the research outputs and computes the verdict; that overhead is what the ratio shows.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

from ._common import interleaved, median, print_table

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 10_000
BATCH = 1024


def _digits_bundle(directory: Path, samples: int) -> Path:
    spec_module = importlib.util.spec_from_file_location("digits_train", ROOT / "examples" / "digits" / "train.py")
    train = importlib.util.module_from_spec(spec_module)
    spec_module.loader.exec_module(train)
    spec = train.make_spec(epochs=3)
    pixels = spec.reference_inputs["pixels"]
    rng = np.random.default_rng(0)
    tiled = np.resize(pixels, (samples, pixels.shape[1]))
    # Jitter so samples are distinct, staying in the 0..16 pixel range.
    spec.reference_inputs = {"pixels": np.clip(tiled + rng.normal(0, 0.5, tiled.shape), 0, 16).astype(np.float32)}
    spec.max_reference_samples = None
    from paritybundle.training import export_spec

    return export_spec(spec, directory / "digits10k").path


def bare_ort_loop(bundle: Path, spinning: bool = True, rows_alone: int = 0) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(bundle / "pipeline.onnx"), options, providers=["CPUExecutionProvider"])
    with np.load(bundle / "reference" / "inputs.npz") as archive:
        pixels = archive["pixels"]
    outputs = [session.run(None, {"pixels": pixels[i : i + BATCH]})[0] for i in range(0, len(pixels), BATCH)]
    np.concatenate(outputs)
    for row in np.linspace(0, len(pixels) - 1, rows_alone).astype(int) if rows_alone else []:
        session.run(None, {"pixels": pixels[row : row + 1]})


def guarantees_floor(bundle: Path) -> None:
    """The bare loop plus the work no check may skip, each done the plainest way: the sha256 of every
    file, reading this environment for the drift comparison, and 16 reference rows sent one request
    each (batch independence). What check costs above this is its own overhead."""
    import hashlib

    from paritybundle.runtime.lock import capture

    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        hashlib.sha256(path.read_bytes()).digest()
    capture(with_closure=False)
    bare_ort_loop(bundle, spinning=False, rows_alone=16)


def main(repeats: int = 9) -> list[tuple[str, str, str, str]]:
    import paritybundle

    with tempfile.TemporaryDirectory() as tmp:
        bundle = _digits_bundle(Path(tmp), SAMPLES)
        assert paritybundle.check(bundle, batch_size=BATCH), "the benchmark bundle must pass its own check"
        times = interleaved(
            {
                "check": lambda: paritybundle.check(bundle, batch_size=BATCH),
                "ort": lambda: bare_ort_loop(bundle),
                "ort-nospin": lambda: bare_ort_loop(bundle, spinning=False),
                "floor": lambda: guarantees_floor(bundle),
            },
            repeats,
        )
    check_s, ort_s, nospin_s = median(times["check"]), median(times["ort"]), median(times["ort-nospin"])
    floor_s = median(times["floor"])
    rows = [
        (
            f"check, {SAMPLES} samples, batch {BATCH} (median of {repeats})",
            f"{check_s * 1000:.1f} ms",
            f"{ort_s * 1000:.1f} ms (bare ORT loop, ORT defaults)",
            f"{check_s / ort_s:.2f}x (<= 1.10x asked)",
        ),
        (
            "  the same, baseline with spinning off as paritybundle runs it",
            f"{check_s * 1000:.1f} ms",
            f"{nospin_s * 1000:.1f} ms",
            f"{check_s / nospin_s:.2f}x",
        ),
        (
            "  floor: that loop plus sha256 of every file, reading this environment, 16 one-row requests",
            f"{check_s * 1000:.1f} ms",
            f"{floor_s * 1000:.1f} ms",
            f"{check_s / floor_s:.2f}x (floor vs bare loop: {floor_s / ort_s:.2f}x)",
        ),
    ]
    print_table("bundle check vs bare ONNX Runtime loop", rows)
    return rows


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
