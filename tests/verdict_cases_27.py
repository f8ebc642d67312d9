"""The cases issue 27 (a verdict that never lies) added to ``python -m bench verdict``: a batch-dependent model,
a missing-value path the references never take, float64 research of a float32 tree model, and a quantized
serving graph within and beyond its declared budget. Each also has its own test (test_batch_dependence.py,
test_missing_probes.py, test_verdict_dtypes.py, test_approximation.py); built here from seeds.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from verdict_cases import Case

from bundle_tools import copy_bundle, rehash


def _batch_statistics_bundle(out: Path) -> Path:
    """BatchNorm on batch statistics, exported as before export refused it."""
    import paritybundle

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.BatchNorm1d(16, track_running_stats=False),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 5),
    ).eval()
    rows = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    export_module: Any = importlib.import_module("paritybundle.training.export")
    saved = export_module.refuse_batch_dependence
    export_module.refuse_batch_dependence = lambda *args, **kwargs: None
    try:
        return paritybundle.export(model, out, reference_inputs=rows, name="bn").path
    finally:
        export_module.refuse_batch_dependence = saved


def _imputer_bundle(out: Path, fill: str) -> Path:
    """Median (research) or 0 (serving) for a missing income; the references never miss one, and no probe rows
    (as exports made before the missing-value probes)."""
    import paritybundle
    from paritybundle import preprocess as pp

    rng = np.random.default_rng(0)
    train = {
        "income": rng.normal(50_000, 10_000, 500).astype(np.float32),
        "age": rng.uniform(20, 70, 500).astype(np.float32),
    }
    train["income"][::10] = np.nan
    references = {name: values[1::10][:40].copy() for name, values in train.items()}
    impute = pp.Impute("median") if fill == "median" else pp.Impute("constant", fill_value=0.0)
    pre = pp.Columns({"income": [impute], "age": [pp.Standardize()]}).fit(train)
    torch.manual_seed(0)
    coverage: Any = importlib.import_module("paritybundle.training.coverage")
    saved = coverage.missing_value_step
    coverage.missing_value_step = lambda column: None
    try:
        return paritybundle.export(
            torch.nn.Linear(2, 3).eval(), out, preprocess=pre, reference_inputs=references, name="income"
        ).path
    finally:
        coverage.missing_value_step = saved


def _forest_bundle(out: Path) -> Path:
    """A scikit-learn forest through skl2onnx, its research outputs predict_proba's float64."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    import paritybundle

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y)
    graph = out.parent / "forest.onnx"
    graph.write_bytes(to_onnx(forest, x[:1], options={"zipmap": False}).SerializeToString())
    research = {"label": forest.predict(x).astype(np.int64), "probabilities": forest.predict_proba(x)}
    return paritybundle.export(
        str(graph), out, reference_inputs={"X": x}, research_outputs=research, name="forest"
    ).path


def _int8_bundle(out: Path) -> Path:
    """An MLP served as its dynamically quantized int8 graph, within a declared budget."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import paritybundle

    rows = np.random.default_rng(0).normal(size=(240, 32)).astype(np.float32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 6))
    x = torch.from_numpy(rows)
    y = (x @ torch.randn(32, 6)).argmax(1)
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()

    def quantize(research_graph: Path) -> Path:
        serving = research_graph.with_name("int8.onnx")
        quantize_dynamic(str(research_graph), str(serving), weight_type=QuantType.QInt8)
        return serving

    return paritybundle.export(
        model.eval(),
        out,
        reference_inputs=rows,
        name="int8",
        serving_model=quantize,
        min_decision_agreement=0.95,
        score_error=paritybundle.ErrorBudget(p50=1.0, p99=4.0, max=8.0),
    ).path


def _favour_first_class(bundle: Path, by: float) -> None:
    """Raise the last layer's bias of class 0 in both graphs (a serving defect beyond quantization)."""
    for graph_file in ("model.onnx", "pipeline.onnx"):
        model = onnx.load(str(bundle / graph_file))
        (bias,) = [i for i in model.graph.initializer if list(i.dims) == [6] and i.data_type == onnx.TensorProto.FLOAT]
        values = onnx.numpy_helper.to_array(bias).copy()
        values[0] += by
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        onnx.save(model, str(bundle / graph_file))
    rehash(bundle)


def build_cases_27(work: Path) -> list[Case]:
    work.mkdir(parents=True, exist_ok=True)
    batch_statistics = _batch_statistics_bundle(work / "bn")
    median, zero = _imputer_bundle(work / "median", "median"), _imputer_bundle(work / "zero", "zero")
    (work / "forest").mkdir()
    forest = _forest_bundle(work / "forest" / "bundle")
    int8 = _int8_bundle(work / "int8")
    favoured = copy_bundle(int8, work / "int8-favoured")
    _favour_first_class(favoured, 8.0)
    return [
        Case("BatchNorm on batch statistics, exported before the refusal (check)", batch_statistics, True),
        Case("imputer fill median -> 0, references never missing (diff)", median, True, ("diff",), zero),
        Case("forest, float64 predict_proba research of a float32 graph", forest, False),
        Case("int8 serving graph within its declared budget", int8, False),
        Case("int8 serving graph favouring one class (+8 bias)", favoured, True),
    ]
