"""Raw text served through the frozen tokenizer vs the same model served on token ids (issue 28's target:
raw-text requests per second >= 0.8x token-id requests per second).

The text example (examples/text/train.py, a BERT built from a config) is exported with its tokenizer; the
same model.onnx is then bundled on its token inputs (the reference features and outputs of the text bundle,
so both serve identical weights). Two `bundle serve` processes answer 1-sentence requests from a closed-loop
aiohttp client, the two interleaved over REPS rounds so host drift hits both alike.

Knobs: DURATION (s per run, 8), WARMUP (s, 2), REPS (3), CONCURRENCY (16).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ._common import print_table, serve_command, wait_ready
from .binary import CONCURRENCY, REPS, _load

PORTS = {"raw text": 8398, "token ids": 8399}
SENTENCE = "The film was very good, and the cat sat on the mat!"


def _bundles(folder: Path) -> dict[str, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "text"))
    import train

    from paritybundle.training import ExportSpec, export_spec

    text = export_spec(train.make_spec(), folder / "text").path
    features = dict(np.load(text / "reference" / "features.npz"))
    outputs = dict(np.load(text / "reference" / "outputs.npz"))
    ids = export_spec(
        ExportSpec(
            model=str(text / "model.onnx"), reference_inputs=features, research_outputs=outputs, name="text-ids"
        ),
        folder / "ids",
    ).path
    return {"raw text": text, "token ids": ids}


def _bodies(tokenizer_bundle: Path) -> dict[str, tuple[bytes, dict[str, str]]]:
    import onnxruntime as ort
    import orjson

    from paritybundle.runtime.session import custom_op_library

    # The token ids the frozen tokenizer makes of the sentence: what a caller tokenizing outside would send.
    options = ort.SessionOptions()
    options.register_custom_ops_library(custom_op_library("onnxruntime-extensions"))
    session = ort.InferenceSession(str(tokenizer_bundle / "preprocess.onnx"), options)
    names = [o.name for o in session.get_outputs()]
    features = dict(zip(names, session.run(None, {"text": np.array([SENTENCE], dtype=object)}), strict=True))
    json_headers = {"Content-Type": "application/json"}
    text = orjson.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}]})
    ids = orjson.dumps(
        {
            "inputs": [
                {"name": name, "shape": list(value.shape), "datatype": "INT64", "data": value.reshape(-1).tolist()}
                for name, value in features.items()
            ]
        }
    )
    return {"raw text": (text, json_headers), "token ids": (ids, json_headers)}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pb-text-bench-"))
    servers = []
    try:
        bundles = _bundles(work)
        bodies = _bodies(bundles["raw text"])
        urls = {}
        for name, bundle in bundles.items():
            port = PORTS[name]
            servers.append(
                subprocess.Popen(
                    serve_command(bundle, port),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_ready(port, servers[-1])
            model = "text" if name == "raw text" else "text-ids"
            urls[name] = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
        rates: dict[str, list[float]] = {name: [] for name in bundles}
        for _ in range(REPS):  # interleaved: raw text, token ids, raw text, ...
            for name in bundles:
                body, headers = bodies[name]
                rates[name].append(asyncio.run(_load(urls[name], body, headers)))
        text_rate, ids_rate = statistics.median(rates["raw text"]), statistics.median(rates["token ids"])
        print_table(
            f"raw text vs token ids: 1-sentence requests, concurrency {CONCURRENCY}, median of {REPS}",
            [
                (
                    "requests/s",
                    f"{text_rate:,.0f} (raw text)",
                    f"{ids_rate:,.0f} (token ids)",
                    f"{text_rate / ids_rate:.2f}x (>= 0.8x)",
                ),
                (
                    "runs",
                    " / ".join(f"{r:,.0f}" for r in rates["raw text"]),
                    " / ".join(f"{r:,.0f}" for r in rates["token ids"]),
                    "-",
                ),
            ],
        )
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
