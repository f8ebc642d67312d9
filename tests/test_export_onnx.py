"""Bundling an ONNX model made elsewhere, held to the research outputs its framework computed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import paritybundle
from paritybundle.errors import ExportParityError, SpecError
from paritybundle.training import ExportSpec, export_spec

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3)).astype(np.float32)
B = RNG.normal(size=3).astype(np.float32)
X = RNG.normal(size=(50, 4)).astype(np.float32)


def _softmax_linear(path):
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _research(x):
    """What a research framework computes, in float64."""
    z = x.astype(np.float64) @ W.astype(np.float64) + B
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def test_existing_onnx_model_is_bundled_and_checks(tmp_path):
    model = _softmax_linear(tmp_path / "linear.onnx")
    spec = ExportSpec(
        model=str(model), reference_inputs={"x": X}, research_outputs={"probabilities": _research(X)}, name="linear"
    )
    result = export_spec(spec, tmp_path / "b")
    manifest = result.manifest
    assert manifest.stages.exporter == "existing ONNX (linear.onnx)" and manifest.outputs[0].kind == "scores"
    assert (tmp_path / "b" / "model.onnx").read_bytes() == model.read_bytes()
    assert paritybundle.check(tmp_path / "b")


def test_existing_onnx_model_that_disagrees_with_research_is_refused(tmp_path):
    model = _softmax_linear(tmp_path / "linear.onnx")
    wrong = _research(X)[:, ::-1].copy()  # research that this graph does not reproduce
    spec = ExportSpec(
        model=str(model), reference_inputs={"x": X}, research_outputs={"probabilities": wrong}, name="linear"
    )
    with pytest.raises(ExportParityError, match="disagrees with the research outputs"):
        export_spec(spec, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_existing_onnx_model_needs_research_outputs(tmp_path):
    model = _softmax_linear(tmp_path / "linear.onnx")
    with pytest.raises(SpecError, match="needs research_outputs"):
        export_spec(ExportSpec(model=str(model), reference_inputs={"x": X}, name="linear"), tmp_path / "b")


def test_research_outputs_must_match_the_reference_count(tmp_path):
    model = _softmax_linear(tmp_path / "linear.onnx")
    spec = ExportSpec(
        model=str(model),
        reference_inputs={"x": X},
        research_outputs={"probabilities": _research(X)[:10]},
        name="linear",
    )
    with pytest.raises(SpecError, match="one row per reference sample"):
        export_spec(spec, tmp_path / "b")
