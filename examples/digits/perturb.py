"""Make a defective copy of a bundle: weights nudged by 0.1% of their spread, manifest re-hashed.

This is the silent kind of skew paritybundle exists to catch: the copy verifies
(every hash matches its re-written manifest), loads, and serves plausible
predictions, but `bundle check` exits 1 and names the output that moved.

    python examples/digits/perturb.py artifacts/digits artifacts/digits-perturbed
    bundle check artifacts/digits-perturbed    # exit 1
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from paritybundle.bundle.manifest import MANIFEST_NAME
from paritybundle.bundle.store import read_manifest, sha256_file


def perturb(source: Path, target: Path, relative_noise: float = 0.001, seed: int = 0) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    rng = np.random.default_rng(seed)
    for graph_file in ("pipeline.onnx", "model.onnx"):
        model = onnx.load(str(target / graph_file))
        for init in model.graph.initializer:
            weights = numpy_helper.to_array(init)
            if weights.dtype.kind == "f" and weights.size > 1:
                noisy = weights + rng.normal(0, relative_noise * weights.std(), weights.shape)
                init.CopyFrom(numpy_helper.from_array(noisy.astype(weights.dtype), init.name))
        onnx.save(model, str(target / graph_file))
    manifest = read_manifest(target)
    files = {rel: sha256_file(target / rel) for rel in manifest.files}
    (target / MANIFEST_NAME).write_text(manifest.model_copy(update={"files": files}).to_json())


if __name__ == "__main__":
    perturb(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}: weights perturbed by 0.1% of their spread, manifest re-hashed")
