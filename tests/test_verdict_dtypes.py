"""A bundle that exports passes its own check, whatever dtypes research used (issue 27, item 1).

Was: a scikit-learn tree's float64 ``predict_proba`` beside its float32 ONNX graph, an fp16 torch
model, an onnxmltools label declared ``[1]``, float32 reference rows for a float64 graph: each exported
with exit 0, then failed ``bundle check`` with exit 3 ("re-export the bundle", which could not help).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import paritybundle
from paritybundle.errors import ParityBundleError, SpecError
from paritybundle.training import ExportSpec, export_spec

DTYPES = ["float16", "float32", "float64", "int32", "int64", "bool", "string"]
_ONNX = {
    "float16": TensorProto.FLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "bool": TensorProto.BOOL,
    "string": TensorProto.STRING,
}


def _identity_graph(path, dtype: str, fixed_label: bool = False) -> None:
    """x -> Identity -> y, both of ``dtype`` (``fixed_label``: y declared ``[1]``, as onnxmltools does)."""
    x = helper.make_tensor_value_info("x", _ONNX[dtype], ["batch"] if fixed_label else ["batch", 2])
    y = helper.make_tensor_value_info("y", _ONNX[dtype], [1] if fixed_label else ["batch", 2])
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def _values(dtype: str, rows: int = 12) -> np.ndarray:
    base = (np.arange(rows * 2).reshape(rows, 2) % 2).astype(np.int64)  # 0/1: every dtype holds them
    if dtype == "string":
        return np.array([["a", "b"][v] for v in base.reshape(-1)], dtype=object).reshape(rows, 2)
    return base.astype(dtype)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=st.sampled_from(DTYPES), inputs=st.sampled_from(DTYPES), research=st.sampled_from(DTYPES))
def test_a_bundle_that_exports_passes_its_own_check(tmp_path_factory, graph, inputs, research):
    """The property: export refuses (one sentence, exit 2 or 1) or its bundle's own check passes."""
    work = tmp_path_factory.mktemp("dtypes")
    _identity_graph(work / "m.onnx", graph)
    spec = ExportSpec(
        model=str(work / "m.onnx"),
        reference_inputs={"x": _values(inputs)},
        research_outputs={"y": _values(research)},
        name="dtypes",
        require_power=False,
    )
    try:
        result = export_spec(spec, work / "bundle")
    except ParityBundleError as exc:
        assert exc.exit_code in (1, 2), exc
        return
    report = paritybundle.check(result.path)
    assert report.passed, (graph, inputs, research)
    declared = {o.name: o for o in result.manifest.outputs}["y"]
    assert declared.dtype == graph
    assert declared.research_dtype == (None if research == graph else research)


@pytest.mark.parametrize(
    "graph, research",
    [
        ("float32", "float64"),
        ("float64", "float32"),
        ("float16", "float32"),
        ("int64", "int32"),
        ("int32", "int64"),
        ("int64", "float64"),
        ("bool", "int64"),
        ("float32", "int64"),
    ],
)
def test_benign_research_dtypes_export_and_pass(tmp_path, graph, research):
    _identity_graph(tmp_path / "m.onnx", graph)
    spec = ExportSpec(
        model=str(tmp_path / "m.onnx"),
        reference_inputs={"x": _values(graph)},
        research_outputs={"y": _values(research)},
        name="benign",
        require_power=False,
    )
    result = export_spec(spec, tmp_path / "bundle")
    assert paritybundle.check(result.path).passed
    assert {o.name: o.research_dtype for o in result.manifest.outputs} == {"y": research}


def test_scores_for_a_label_output_are_refused_naming_predict(tmp_path):
    _identity_graph(tmp_path / "m.onnx", "int64")
    spec = ExportSpec(
        model=str(tmp_path / "m.onnx"),
        reference_inputs={"x": _values("int64")},
        research_outputs={"y": _values("int64") * 0.37},
        name="label",
        require_power=False,
    )
    with pytest.raises(
        SpecError,
        match=r"research output 'y' holds float64 values, but the graph's 'y' is int64: "
        r"pass what research decided for it \(e\.g\. scikit-learn's predict\(\)",
    ):
        export_spec(spec, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_a_label_declared_one_row_gets_a_batch_axis(tmp_path):
    _identity_graph(tmp_path / "m.onnx", "float32", fixed_label=True)
    labels = _values("float32")[:, 0].copy()
    spec = ExportSpec(
        model=str(tmp_path / "m.onnx"),
        reference_inputs={"x": labels},
        research_outputs={"y": labels},
        name="label1",
        require_power=False,
    )
    result = export_spec(spec, tmp_path / "bundle")
    assert result.manifest.outputs[0].shape[0] == "batch"
    assert paritybundle.check(result.path).passed


def test_a_scikit_learn_tree_with_float64_probabilities_passes_its_check(tmp_path):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
    onx = skl2onnx.to_onnx(tree, x[:1], options={id(tree): {"zipmap": False}})
    (tmp_path / "tree.onnx").write_bytes(onx.SerializeToString())
    spec = ExportSpec(
        model=str(tmp_path / "tree.onnx"),
        reference_inputs={"X": x},
        research_outputs={"label": tree.predict(x), "probabilities": tree.predict_proba(x)},
        name="tree",
        require_power=False,
    )
    result = export_spec(spec, tmp_path / "bundle")
    assert paritybundle.check(result.path).passed
    assert {o.name: o.research_dtype for o in result.manifest.outputs} == {"label": None, "probabilities": "float64"}


class _Half(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_fp16_and_fp64_torch_models_pass_their_own_check(tmp_path, dtype):
    model = _Half().to(dtype)
    x = torch.randn(64, 8).to(dtype).numpy()
    result = paritybundle.export(model, tmp_path / "bundle", reference_inputs=x, name="half", require_power=False)
    report = paritybundle.check(result.path)
    assert report.passed, report


# --- item 2: what was exit 70 at export -------------------------------------------------------------------


class _Decision(torch.nn.Module):
    """An int64 decision as the only output: any change of it is infinitely past a zero tolerance."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x).argmax(dim=1)


def test_an_int64_decision_output_exports_and_checks(tmp_path):
    """Was: the power measurement's ratio was infinite and failed the manifest's own validation (exit 70)."""
    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    result = paritybundle.export(_Decision().eval(), tmp_path / "bundle", reference_inputs=x, name="decision")
    assert result.manifest.power.detected is not None
    assert all(np.isfinite(list(result.manifest.power.worst_ratios.values())))
    assert paritybundle.check(result.path).passed


@pytest.mark.parametrize("clip", [{"lower": 0.0}, {"upper": 1.0}])
def test_a_one_sided_clip_exports_and_checks(tmp_path, clip):
    """Was: Clip(lower=0) put an infinite range into the coverage (exit 70)."""
    from paritybundle import preprocess as pp

    data = {"a": np.linspace(-1, 2, 40, dtype=np.float32), "b": np.linspace(1, 2, 40, dtype=np.float32)}
    pre = pp.Columns({"a": [pp.Clip(**clip), pp.Standardize()], "b": [pp.Standardize()]}).fit(data)
    result = paritybundle.export(
        torch.nn.Linear(2, 1), tmp_path / "bundle", preprocess=pre, reference_inputs=data, name="clip"
    )
    assert paritybundle.check(result.path).passed
