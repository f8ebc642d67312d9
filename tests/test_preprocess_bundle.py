"""Bundles with frozen preprocessing: export, check by stage, mismatch injection, serving raw inputs,
scikit-learn and torch preprocessing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import require  # noqa: E402

import paritybundle
from bundle_tools import copy_bundle, edit_preprocess, node, replace_initializer
from paritybundle import SessionSettings
from paritybundle import preprocess as pp
from paritybundle.bundle.store import read_manifest
from paritybundle.cli import main
from paritybundle.commands.endpoint import check_url
from paritybundle.errors import ExportParityError, InputValidationError, SpecError


def check_cli(bundle, capsys, *extra):
    code = main(["check", str(bundle), *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --- what export writes --------------------------------------------------------------------


def test_wine_bundle_has_all_stages_and_the_fitted_statistics(wine_bundle):
    manifest = read_manifest(wine_bundle)
    assert manifest.stages.preprocess == "preprocess.onnx" and manifest.reference.features == "reference/features.npz"
    for path in ("preprocess.onnx", "model.onnx", "pipeline.onnx", "reference/features.npz"):
        assert path in manifest.files
    pre = manifest.preprocessing
    assert pre.source == "paritybundle" and [f.name for f in pre.features] == ["features"]
    columns = {c.input: c for c in pre.columns}
    onehot = columns["color_band"].steps[0].params
    assert sorted(onehot["vocabulary"]) == ["deep", "medium", "pale"] and onehot["oov_index"] == 3
    assert onehot["counts"] == sorted(onehot["counts"], reverse=True)  # most frequent first
    assert columns["color_band"].features == [13, 17]  # 13 numeric columns, then 3 categories + OOV
    assert [s.kind for s in columns["magnesium"].steps] == ["impute", "clip", "standardize"]
    # Raw inputs are what callers send: the category as strings, magnesium with NaN allowed.
    inputs = {s.name: s for s in manifest.inputs}
    assert inputs["color_band"].dtype == "string"
    assert inputs["magnesium"].allow_nonfinite and not inputs["alcohol"].allow_nonfinite
    # The model's input is the preprocessing output.
    model = onnx.load(str(wine_bundle / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["features"]


def test_inspect_shows_fitted_statistics_per_column(wine_bundle, capsys):
    assert main(["inspect", str(wine_bundle)]) == 0
    out = capsys.readouterr().out
    assert "preprocessing (paritybundle)" in out and "magnesium" in out and "impute" in out
    assert "vocabulary 3 + OOV bucket at index 3" in out and "mean" in out and "std" in out


@pytest.mark.parametrize("bundle_fixture", ["wine_bundle", "image_bundle"])
def test_check_passes_every_stage_under_other_threads_and_optimization_levels(bundle_fixture, request):
    bundle = request.getfixturevalue(bundle_fixture)
    for threads in (1, 2):
        for level in ("disable", "basic", "all"):
            report = paritybundle.check(
                bundle, settings=SessionSettings(intra_op_num_threads=threads, graph_optimization_level=level)
            )
            assert report.passed, (threads, level, report.diagnosis)
            assert [(s.stage, s.passed) for s in report.stages] == [
                ("preprocess", True),
                ("model", True),
                ("pipeline", True),
                ("merge", True),
                ("rows alone", True),
            ]
            assert report.diagnosis is None


def test_check_json_report_carries_stages_and_columns(wine_bundle, tmp_path, capsys):
    code, _ = check_cli(wine_bundle, capsys, "--json", tmp_path / "r.json")
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    pre = report["stages"][0]
    assert pre["stage"] == "preprocess" and {c["input"] for c in pre["columns"]} >= {"alcohol", "color_band"}
    assert report["diagnosis"] is None


# --- mismatch injection: each must exit 1 and name the stage and column ------------------------


def test_a_changed_fitted_constant_names_preprocessing_and_the_column(wine_bundle, tmp_path, capsys):
    bundle = copy_bundle(wine_bundle, tmp_path / "b")
    edit_preprocess(bundle, lambda m: replace_initializer(m, "alcohol/0_standardize/mean", lambda a: a + 0.3))
    code, out = check_cli(bundle, capsys)
    assert code == 1
    assert "preprocessing diverged in preprocess.onnx: column 'alcohol'" in out
    assert "the model reproduces research on the reference features" in out
    report = paritybundle.check(bundle)
    failing = [c.input for c in report.stages[0].columns if not c.comparison.passed]
    assert failing == ["alcohol"]


def test_a_category_dropped_from_the_vocabulary_names_the_column(wine_bundle, tmp_path, capsys):
    bundle = copy_bundle(wine_bundle, tmp_path / "b")

    def drop_first_category(model):
        encoder = node(model, "LabelEncoder")
        attributes = {a.name: a for a in encoder.attribute}
        del attributes["keys_strings"].strings[0]
        del attributes["values_int64s"].ints[0]

    edit_preprocess(bundle, drop_first_category)
    code, out = check_cli(bundle, capsys)
    assert code == 1 and "column 'color_band'" in out and "preprocessing diverged" in out
    assert "column 'alcohol'" not in out


def test_swapped_channel_order_names_preprocessing_and_the_image_input(image_bundle, tmp_path, capsys):
    bundle = copy_bundle(image_bundle, tmp_path / "b")
    edit_preprocess(bundle, lambda m: replace_initializer(m, "channel_order/order", lambda a: a[::-1]))
    code, out = check_cli(bundle, capsys)
    assert code == 1 and "preprocessing diverged in preprocess.onnx: column 'image'" in out


def test_a_changed_interpolation_names_preprocessing(image_bundle, tmp_path, capsys):
    bundle = copy_bundle(image_bundle, tmp_path / "b")

    def nearest(model):
        resize = node(model, "Resize")
        for attribute in resize.attribute:
            if attribute.name == "mode":
                attribute.s = b"nearest"

    edit_preprocess(bundle, nearest)
    code, out = check_cli(bundle, capsys)
    assert code == 1 and "preprocessing diverged" in out and "column 'image'" in out


def test_a_changed_model_is_the_models_fault_on_correct_features(wine_bundle, tmp_path, capsys):
    bundle = copy_bundle(wine_bundle, tmp_path / "b")

    def perturb(model):
        from onnx import numpy_helper

        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.ndim == 2:
                init.CopyFrom(numpy_helper.from_array(array * 1.01, init.name))

    edit_preprocess(bundle, perturb, graph_file="model.onnx")
    code, out = check_cli(bundle, capsys)
    assert code == 1 and "the model diverged on correct features" in out
    report = paritybundle.check(bundle)
    # The merge still holds: the pipeline computes what the (changed) stages compute in sequence.
    assert [s.passed for s in report.stages] == [True, False, False, True, False]  # rows alone: the model's fault too


def test_a_pipeline_that_differs_from_its_stages_is_blamed_on_the_merge(wine_bundle, tmp_path, capsys):
    bundle = copy_bundle(wine_bundle, tmp_path / "b")
    edit_preprocess(
        bundle,
        lambda m: replace_initializer(m, "preprocess/alcohol/0_standardize/std", lambda a: a * 2),
        graph_file="pipeline.onnx",
    )
    code, out = check_cli(bundle, capsys)
    assert code == 1 and "only the merged pipeline diverges" in out
    report = paritybundle.check(bundle)
    assert [s.passed for s in report.stages] == [True, True, False, False, False]


def test_export_fails_closed_when_a_step_graph_disagrees_with_its_research_path(tmp_path):
    torch = require("torch")

    class WrongGraphScale(pp.Scale):  # a buggy custom step: the graph multiplies by something else
        def _to_onnx(self, graph, x, where):
            return graph.node("Mul", [x, graph.constant(self.factor * 1.1, f"{where}/factor")], where)

    data = {"a": np.linspace(0, 1, 20, dtype=np.float32), "b": np.linspace(1, 2, 20, dtype=np.float32)}
    pre = pp.Columns({"a": [pp.Standardize()], "b": [WrongGraphScale(2.0)]}).fit(data)
    with pytest.raises(ExportParityError, match="column 'b'") as caught:
        paritybundle.export(torch.nn.Linear(2, 1), tmp_path / "out", preprocess=pre, reference_inputs=data, name="x")
    assert "column 'a'" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_unfitted_preprocessing_is_refused(tmp_path):
    torch = require("torch")
    with pytest.raises(SpecError, match="not fitted"):
        paritybundle.export(
            torch.nn.Linear(1, 1),
            tmp_path / "out",
            preprocess=pp.Pipeline([pp.Standardize()]),
            reference_inputs=np.ones((3, 1), np.float32),
            name="x",
        )


# --- serving raw inputs ------------------------------------------------------------------------


def raw_rows(bundle, rows=slice(0, 3)):
    with np.load(bundle / "reference/inputs.npz", allow_pickle=False) as data:
        return {name: data[name][rows] for name in data.files}


def test_serving_validates_raw_columns_by_name(wine_bundle):
    runtime = paritybundle.load(wine_bundle)
    rows = raw_rows(wine_bundle)
    assert runtime.predict(rows)["scores"].shape == (3, 3)
    missing = {k: v for k, v in rows.items() if k != "alcohol"}
    with pytest.raises(InputValidationError, match="'alcohol' is missing"):
        runtime.predict(missing)
    with pytest.raises(InputValidationError, match="'alcohol' must be float32, got <U"):
        runtime.predict({**rows, "alcohol": np.array(["12.1", "13", "x"])})
    with pytest.raises(InputValidationError, match="'color_band' must hold strings"):
        runtime.predict({**rows, "color_band": np.array([1.0, 2.0, 3.0], np.float32)})


def test_missing_values_are_accepted_only_where_a_step_replaces_them(wine_bundle):
    runtime = paritybundle.load(wine_bundle)
    rows = raw_rows(wine_bundle)
    rows["magnesium"] = np.array([np.nan] * 3, np.float32)
    assert np.isfinite(runtime.predict(rows)["scores"]).all()  # imputed with the fitted median
    rows["alcohol"] = np.array([np.nan] * 3, np.float32)
    with pytest.raises(InputValidationError, match="'alcohol' contains NaN"):
        runtime.predict(rows)


def test_unseen_categories_share_the_out_of_vocabulary_bucket(wine_bundle):
    runtime = paritybundle.load(wine_bundle)
    rows = raw_rows(wine_bundle)
    first = runtime.predict({**rows, "color_band": np.array(["purple"] * 3)})["scores"]
    second = runtime.predict({**rows, "color_band": np.array(["", "PALE", "unknown"])})["scores"]
    np.testing.assert_array_equal(first, second)
    known = runtime.predict(rows)["scores"]
    assert not np.array_equal(first, known)


def test_the_v2_server_takes_raw_columns_and_answers_4xx_naming_the_column(wine_bundle, tmp_path):
    from serving_tools import running_server

    rows = raw_rows(wine_bundle, slice(0, 2))

    def tensor(name, values):
        if values.dtype.kind == "U":
            return {"name": name, "shape": [len(values)], "datatype": "BYTES", "data": values.tolist()}
        return {"name": name, "shape": [len(values)], "datatype": "FP32", "data": [float(v) for v in values]}

    with running_server(wine_bundle, tmp_path) as server:
        # JSON has no NaN, so missing values are filled here; NaN handling is tested through load() above.
        body = {"inputs": [tensor(k, np.nan_to_num(v, nan=1.0) if v.dtype.kind == "f" else v) for k, v in rows.items()]}
        status, answer = server.post("/v2/models/wine/infer", body)
        assert status == 200, answer
        assert answer["outputs"][0]["shape"] == [2, 3]
        unseen = json.loads(json.dumps(body))
        next(t for t in unseen["inputs"] if t["name"] == "color_band")["data"] = ["violet", "teal"]
        assert server.post("/v2/models/wine/infer", unseen)[0] == 200
        without = {"inputs": [t for t in body["inputs"] if t["name"] != "proline"]}
        status, answer = server.post("/v2/models/wine/infer", without)
        assert status == 400 and "proline" in answer["error"]
        wrong = json.loads(json.dumps(body))
        next(t for t in wrong["inputs"] if t["name"] == "alcohol").update(datatype="BYTES", data=["a", "b"])
        status, answer = server.post("/v2/models/wine/infer", wrong)
        assert 400 <= status < 500 and "alcohol" in answer["error"]
        # The live endpoint reproduces research on the raw reference inputs (strings included).
        assert check_url(wine_bundle, server.url).passed


# --- preprocessing made elsewhere --------------------------------------------------------------


def test_a_fitted_scikit_learn_column_transformer_is_frozen_through_skl2onnx(tmp_path, capsys):
    torch = require("torch")
    pd = require("pandas", reason="scikit-learn fits named columns on a DataFrame (the sklearn extra)")
    require("skl2onnx", reason="the sklearn extra converts scikit-learn preprocessing")
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame(
        {
            "height": rng.normal(170, 10, n).astype(np.float32),
            "weight": rng.normal(70, 12, n).astype(np.float32),
            "city": rng.choice(["paris", "lyon", "nice"], n),
        }
    )
    frame.loc[::9, "weight"] = np.nan
    transformer = ColumnTransformer(
        [
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["height", "weight"]),
            ("city", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["city"]),
        ]
    ).fit(frame)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    result = paritybundle.export(model, tmp_path / "sk", preprocess=transformer, reference_inputs=frame, name="sk")
    manifest = result.manifest
    assert manifest.preprocessing.source == "scikit-learn"
    columns = {c.input: c for c in manifest.preprocessing.columns}
    assert columns["weight"].features == [0, 2] and columns["city"].features == [2, 5]
    assert [s.kind for s in columns["weight"].steps] == ["SimpleImputer", "StandardScaler"]
    assert columns["weight"].steps[1].params["mean_"][0] == pytest.approx(frame["height"].mean(), rel=1e-5)
    assert {s.name: s.allow_nonfinite for s in manifest.inputs}["weight"] is True
    report = paritybundle.check(result.path)
    assert report.passed and [s.passed for s in report.stages] == [True, True, True, True, True]
    code, out = check_cli(result.path, capsys)
    assert code == 0 and "column city" in out


def test_a_torch_module_is_accepted_as_preprocessing(tmp_path):
    torch = require("torch")

    class Scaler(torch.nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean))
            self.register_buffer("std", torch.tensor(std))

        def forward(self, x):
            return (torch.log1p(x) - self.mean) / self.std

    x = np.abs(np.random.default_rng(0).normal(size=(64, 3))).astype(np.float32)
    torch.manual_seed(0)
    result = paritybundle.export(
        torch.nn.Linear(3, 2),
        tmp_path / "t",
        preprocess=Scaler([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]),
        reference_inputs={"x": x},
        name="t",
    )
    manifest = result.manifest
    assert manifest.preprocessing.source == "torch" and manifest.preprocessing.columns[0].steps[0].params["std"] == [
        1.0,
        2.0,
        3.0,
    ]
    assert paritybundle.check(result.path).passed


def test_a_server_whose_preprocessing_diverges_stays_not_ready_and_says_where(image_bundle, tmp_path):
    from serving_tools import running_server

    bundle = copy_bundle(image_bundle, tmp_path / "b")
    edit_preprocess(bundle, lambda m: replace_initializer(m, "channel_order/order", lambda a: a[::-1]))
    with running_server(bundle, tmp_path, until="settled") as server:
        status, body = server.get("/v2/health/ready")
        assert status == 503 and body["status"] == "failed"
        assert "preprocessing diverged in preprocess.onnx: column 'image'" in body["reason"]
