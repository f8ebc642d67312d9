"""Serving choices (issue 16, problem 6): the execution provider and threads of ``bundle serve``, the
GPU build pinned for bundles validated on CUDA, and ``predict`` on a DataFrame and 1-D columns."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require  # noqa: E402

import paritybundle
from paritybundle.cli import main
from paritybundle.runtime import lock as environment
from paritybundle.serving.state import ServeOptions


def test_serve_options_carry_provider_and_threads_into_the_session_settings(digits_bundle):
    from paritybundle.runtime.session import session_settings

    options = ServeOptions(bundle=str(digits_bundle), providers=["CPUExecutionProvider"], intra_op_num_threads=1)
    chosen = session_settings(paritybundle.verify(digits_bundle).manifest, options.session)
    assert chosen.providers == ("CPUExecutionProvider",) and chosen.intra_op_num_threads == 1
    assert ServeOptions.from_json(options.to_json()) == options  # extra workers get the same settings


def test_serve_with_a_provider_this_onnxruntime_lacks_is_exit_2_before_listening(digits_bundle, capsys):
    assert main(["serve", str(digits_bundle), "--provider", "CUDAExecutionProvider", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "execution provider CUDAExecutionProvider is not available" in err and "Traceback" not in err


def test_a_bundle_validated_on_cuda_pins_the_gpu_build_at_the_locks_version():
    lock = environment.capture(None)
    cpu = environment.serve_requirements_text(lock, ("CPUExecutionProvider",))
    gpu = environment.serve_requirements_text(lock, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert f"onnxruntime=={lock.onnxruntime.version}" in cpu.splitlines()
    assert f"onnxruntime-gpu=={lock.onnxruntime.version}" in gpu.splitlines()
    assert not any(line.startswith("onnxruntime==") for line in gpu.splitlines())


def test_the_serving_closure_follows_the_gpu_build_when_that_is_what_is_installed():
    installed = {"onnxruntime-gpu": "1.32.0", "numpy": "2.0.0", "onnx": "1.17.0"}
    closure = environment.serving_closure(installed=installed)
    assert closure.get("onnxruntime-gpu") == "1.32.0"


def test_export_validating_on_a_provider_that_is_not_here_is_exit_2(tmp_path):
    torch = require("torch")
    from paritybundle.errors import UsageError

    model = torch.nn.Linear(3, 2).eval()
    with pytest.raises(UsageError, match="CUDAExecutionProvider is not available") as caught:
        paritybundle.export(
            model,
            tmp_path / "b",
            name="m",
            reference_inputs=np.ones((4, 3), np.float32),
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        )
    assert caught.value.exit_code == 2 and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def column_bundle(tmp_path_factory):
    """A scikit-learn pipeline through skl2onnx: one [None, 1] input per column, as skl2onnx makes them."""
    require("skl2onnx")
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"size": rng.normal(size=60).astype(np.float32), "colour": rng.choice(["red", "green", "blue"], 60)}
    )
    labels = (frame["size"] > 0).astype(int) + (frame["colour"] == "red")
    model = Pipeline(
        [
            ("columns", ColumnTransformer([("num", StandardScaler(), ["size"]), ("cat", OneHotEncoder(), ["colour"])])),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    ).fit(frame, labels)
    onnx_model = convert_sklearn(
        model,
        initial_types=[("size", FloatTensorType([None, 1])), ("colour", StringTensorType([None, 1]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    folder = tmp_path_factory.mktemp("columns")
    (folder / "model.onnx").write_bytes(onnx_model.SerializeToString())
    result = paritybundle.export(
        str(folder / "model.onnx"),
        folder / "bundle",
        name="columns",
        reference_inputs={"size": frame[["size"]].to_numpy(), "colour": frame[["colour"]].to_numpy()},
        research_outputs={
            "label": model.predict(frame),
            "probabilities": model.predict_proba(frame).astype(np.float32),
        },
    )
    return result.path, frame, model


def test_predict_takes_a_dataframe_and_one_dimensional_columns(column_bundle):
    path, frame, model = column_bundle
    runtime = paritybundle.load(path)
    from_frame = runtime.predict(frame)  # float64-free: size is float32; colour object strings
    np.testing.assert_allclose(from_frame["probabilities"], model.predict_proba(frame), atol=1e-5)
    from_columns = runtime.predict({"size": frame["size"].to_numpy(), "colour": frame["colour"].to_numpy()})
    np.testing.assert_array_equal(from_columns["label"], from_frame["label"])
