"""Helpers for tests that tamper with bundles the way a defect (or an attacker) would."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from paritybundle.bundle.manifest import MANIFEST_NAME
from paritybundle.bundle.store import read_manifest, sha256_file

# Cases run by the hostile-input and crash tests, printed at the end of the session (conftest).
HOSTILE_COUNTS: dict[str, Any] = {}


def copy_bundle(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def rehash(bundle: Path) -> None:
    """Rewrite bundle.json so every listed file's hash matches again (what a careless fix-up would do)."""
    manifest = read_manifest(bundle)
    files = {rel: sha256_file(bundle / rel) for rel in manifest.files}
    (bundle / MANIFEST_NAME).write_text(manifest.model_copy(update={"files": files}).to_json())


def truncate_and_rehash(bundle: Path, relative: str, keep: int) -> None:
    """Cut a file to its first `keep` bytes and re-hash the manifest over it."""
    path = bundle / relative
    path.write_bytes(path.read_bytes()[:keep])
    rehash(bundle)


def edit_initializers(bundle: Path, change) -> None:
    """Apply ``change(name, array) -> array`` to every float initializer of both graphs, then rehash."""
    for graph_file in ("pipeline.onnx", "model.onnx"):
        model = onnx.load(str(bundle / graph_file))
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype.kind == "f" and array.size > 1:
                init.CopyFrom(numpy_helper.from_array(change(init.name, array).astype(array.dtype), init.name))
        onnx.save(model, str(bundle / graph_file))
    rehash(bundle)


def perturb_weights(bundle: Path, relative_noise: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    edit_initializers(bundle, lambda _n, a: a + rng.normal(0, relative_noise * (a.std() or 1.0), a.shape))


def round_weights_to_fp16(bundle: Path) -> None:
    edit_initializers(bundle, lambda _n, a: a.astype(np.float16).astype(np.float32))


def edit_preprocess(bundle: Path, change, *, graph_file: str = "preprocess.onnx", remerge: bool = True) -> None:
    """Apply ``change(model)`` to a graph of a bundle with preprocessing, rebuild pipeline.onnx from
    the edited stages (as a re-implementation would ship it), and rehash the manifest."""
    from paritybundle.training.compose import merge_files

    model = onnx.load(str(bundle / graph_file))
    change(model)
    onnx.save(model, str(bundle / graph_file))
    if remerge and graph_file != "pipeline.onnx":
        merge_files(bundle / "preprocess.onnx", bundle / "model.onnx", bundle / "pipeline.onnx")
    rehash(bundle)


def initializer(model, suffix: str):
    """The one initializer whose name ends with ``suffix`` (fitted constants are named column/step/what)."""
    found = [i for i in model.graph.initializer if i.name.endswith(suffix)]
    assert len(found) == 1, [i.name for i in model.graph.initializer]
    return found[0]


def replace_initializer(model, suffix: str, change) -> None:
    init = initializer(model, suffix)
    array = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(np.asarray(change(array)).astype(array.dtype), init.name))


def node(model, op_type: str):
    found = [n for n in model.graph.node if n.op_type == op_type]
    assert len(found) >= 1, op_type
    return found[0]
