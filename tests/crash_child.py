"""Child process for the crash-safety tests: prepare, say READY, wait for 'go', export, say DONE.

Usage: python crash_child.py WORKDIR TARGET [--force]
The model is an ONNX linear layer with a 16 MB weight, so that staging, hashing and
renaming take long enough for a SIGKILL to land inside them.
"""

import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from paritybundle.cli import main

work, target = Path(sys.argv[1]), sys.argv[2]
model_path = work / "linear.onnx"
if not model_path.exists():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(1024, 4096)).astype(np.float32) * 0.01
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4096])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(model_path))
spec_file = work / "spec.py"
spec_file.write_text(
    "import numpy as np, onnx\n"
    "from onnx import numpy_helper\n"
    "from paritybundle.training import ExportSpec\n"
    f"W = numpy_helper.to_array(onnx.load({str(model_path)!r}).graph.initializer[0]).astype(np.float64)\n"
    "x = np.random.default_rng(1).normal(size=(256, 1024)).astype(np.float32)\n"
    "def make():\n"
    f"    return ExportSpec(model={str(model_path)!r}, reference_inputs={{'x': x}},\n"
    "                      research_outputs={'y': (x.astype(np.float64) @ W).astype(np.float32)}, name='linear')\n"
)
print("READY", flush=True)
sys.stdin.readline()
started = time.perf_counter()
code = main(["export", f"{spec_file}:make", "-o", target] + (["--force"] if "--force" in sys.argv else []))
print(f"DONE {code} {time.perf_counter() - started:.3f}", flush=True)
sys.exit(code)
