"""Each preprocessing step: the research path (numpy) and the frozen graph (ONNX Runtime) agree,
and the fitted state is what the step's documentation says."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import require  # noqa: E402
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from paritybundle import preprocess as pp
from paritybundle.errors import SpecError

ORT_SETTINGS = [(threads, level) for threads in (1, 2) for level in ("disable", "all")]


def run_graph(preprocessor, raw, threads=1, level="all"):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    session = ort.InferenceSession(preprocessor.to_onnx(raw, 20).SerializeToString(), options)
    return session.run(None, raw)[0]


def assert_close(research, graph, atol=1e-5, rtol=1e-5):
    assert research.shape == graph.shape and research.dtype == graph.dtype
    np.testing.assert_allclose(graph, research, atol=atol, rtol=rtol, equal_nan=True)


NUMERIC_STEPS = [
    lambda: [pp.Standardize()],
    lambda: [pp.MinMaxScale((-1, 1))],
    lambda: [pp.Clip(quantiles=(0.05, 0.95))],
    lambda: [pp.Clip(lower=-1.0, upper=2.0)],
    lambda: [pp.Impute("mean")],
    lambda: [pp.Impute("median"), pp.Standardize()],
    lambda: [pp.Impute("constant", fill_value=-7)],
    lambda: [pp.Log1p()],
]


@pytest.mark.parametrize("make_steps", NUMERIC_STEPS, ids=lambda f: repr(f()))
@pytest.mark.parametrize("threads,level", ORT_SETTINGS)
def test_numeric_steps_graph_matches_research(make_steps, threads, level):
    rng = np.random.default_rng(0)
    train = rng.gamma(2.0, 3.0, (200, 3)).astype(np.float32)
    train[rng.random(train.shape) < 0.1] = np.nan
    test = rng.gamma(2.0, 3.0, (50, 3)).astype(np.float32)
    test[::5, 1] = np.nan
    pre = pp.Pipeline(make_steps(), input="x").fit(train)
    assert_close(pre.transform(test), run_graph(pre, {"x": test}, threads, level))


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(2, 30), st.integers(1, 4)),
        elements=st.one_of(st.floats(-1e4, 1e4, width=32), st.just(float("nan"))),
    )
)
def test_impute_then_standardize_agree_on_any_finite_or_missing_data(data):
    if np.isnan(data).all(axis=0).any():
        with pytest.raises(SpecError, match="no observed"):
            pp.Pipeline([pp.Impute("median"), pp.Standardize()], input="x").fit(data)
        return
    pre = pp.Pipeline([pp.Impute("median"), pp.Standardize(), pp.Clip(-3, 3)], input="x").fit(data)
    research = pre.transform(data)
    assert not np.isnan(research).any()  # imputation replaced every NaN
    assert_close(research, run_graph(pre, {"x": data}), atol=1e-4)


def test_fitted_statistics_ignore_nan_and_constant_features_are_not_divided_by_zero():
    train = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0]], np.float32)
    standardize = pp.Standardize().fit(train)
    assert standardize.describe() == {"mean": [2.0, 5.0], "std": [1.0, 1.0]}
    scale = pp.MinMaxScale().fit(train)
    np.testing.assert_allclose(scale.transform(np.array([[2.0, 5.0]], np.float32)), [[0.5, 0.0]])
    assert pp.Impute("median").fit(train).describe()["fill"] == [2.0, 5.0]


def test_nan_behaviour_is_explicit_per_step():
    x = np.array([[np.nan], [1.0]], np.float32)
    for step in (pp.Standardize(), pp.MinMaxScale(), pp.Clip(0, 1), pp.Log1p()):
        pre = pp.Pipeline([step], input="x").fit(np.array([[0.0], [2.0]], np.float32))
        assert step.nan == "propagates"
        assert np.isnan(pre.transform(x)[0, 0]) and np.isnan(run_graph(pre, {"x": x})[0, 0])
    impute = pp.Pipeline([pp.Impute("mean")], input="x").fit(np.array([[0.0], [2.0]], np.float32))
    assert impute.chain.steps[0].nan == "replaced" and run_graph(impute, {"x": x})[0, 0] == 1.0


def test_category_vocabulary_is_ordered_by_frequency_and_unseen_values_go_to_the_oov_bucket():
    train = np.array(["b", "a", "b", "c", "b", "a"])
    index = pp.Pipeline([pp.Index()], input="cat").fit(train)
    assert index.chain.steps[0].describe() == {"vocabulary": ["b", "a", "c"], "counts": [3, 2, 1], "oov_index": 3}
    test = np.array(["a", "b", "c", "never seen", "", "B"])  # exact match: "B" is not "b"
    expected = np.array([[1], [0], [2], [3], [3], [3]])
    np.testing.assert_array_equal(index.transform(test), expected)
    np.testing.assert_array_equal(run_graph(index, {"cat": test}), expected)
    onehot = pp.Pipeline([pp.OneHot(max_categories=2)], input="cat").fit(train)
    research = onehot.transform(test)
    assert research.shape == (6, 3)  # b, a, OOV
    assert research[:, 2].tolist() == [0, 0, 1, 1, 1, 1]  # "c" is OOV once only two categories are kept
    assert_close(research, run_graph(onehot, {"cat": test}))


def test_columns_of_mixed_types_concatenate_in_order_with_recorded_slices():
    rng = np.random.default_rng(1)
    data = {"age": rng.integers(18, 90, 40), "income": rng.lognormal(10, 1, 40), "city": rng.choice(["x", "y"], 40)}
    pre = pp.Columns({"age": [pp.Standardize()], "income": [pp.Log1p(), pp.MinMaxScale()], "city": [pp.OneHot()]}).fit(
        data
    )
    assert [(c.input, c.features) for c in pre.columns()] == [("age", [0, 1]), ("income", [1, 2]), ("city", [2, 5])]
    assert_close(pre.transform(data), run_graph(pre, data))


def test_columns_refuse_wrong_kinds_with_the_column_named():
    pre = pp.Columns({"a": [pp.Standardize()], "b": [pp.OneHot()]})
    with pytest.raises(SpecError, match="'b' starts with a category step but holds float"):
        pre.fit({"a": np.ones(3), "b": np.ones(3)})
    with pytest.raises(SpecError, match="column 'b' is missing"):
        pre.fit({"a": np.ones(3)})
    with pytest.raises(SpecError, match="'a' must hold numbers"):
        pre.fit({"a": np.array(["x", "y"]), "b": np.array(["x", "y"])})
    with pytest.raises(SpecError, match="not fitted"):
        pp.Pipeline([pp.Standardize()]).transform(np.ones((2, 1)))


IMAGE_CASES = [
    ("nearest", False, (5, 6)),
    ("nearest", False, (16, 16)),
    ("linear", False, (5, 6)),
    ("linear", False, (16, 16)),
    ("linear", True, (3, 5)),
    ("cubic", False, (16, 12)),
    ("cubic", True, (4, 4)),
]


@pytest.mark.parametrize("interpolation,antialias,size", IMAGE_CASES)
@pytest.mark.parametrize("threads,level", ORT_SETTINGS)
def test_image_steps_graph_matches_research(interpolation, antialias, size, threads, level):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    pre = pp.Pipeline(
        [
            pp.ToFloatCHW(),
            pp.ChannelOrder("RGB", "BGR"),
            pp.Scale(1 / 255),
            pp.Resize(size, interpolation, antialias),
            pp.Normalize(),
        ],
        input="image",
    ).fit(images)
    research = pre.transform(images)
    assert research.shape == (6, 3, *size)
    assert_close(research, run_graph(pre, {"image": images}, threads, level), atol=1e-5)


def test_channel_order_and_layout():
    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[..., 0] = 10  # red
    image[..., 2] = 30  # blue
    pre = pp.Pipeline([pp.ToFloatCHW(), pp.ChannelOrder("RGB", "BGR")], input="image").fit(image)
    out = pre.transform(image)
    assert out.shape == (1, 3, 2, 2) and out[0, 0, 0, 0] == 30 and out[0, 2, 0, 0] == 10
    np.testing.assert_array_equal(run_graph(pre, {"image": image}), out)


@pytest.mark.parametrize("mode,torch_mode", [("nearest", "nearest"), ("linear", "bilinear"), ("cubic", "bicubic")])
@pytest.mark.parametrize("size", [(5, 7), (16, 16), (3, 3)])
def test_resize_without_antialias_equals_torch_interpolate(mode, torch_mode, size):
    """The stated semantics: torch's interpolate(align_corners=False, antialias=False)."""
    torch = require("torch", reason="torch (the training extra) is the cross-reference here")
    images = np.random.default_rng(3).random((2, 3, 8, 8)).astype(np.float32)
    ours = pp.Resize(size, mode).transform(images)
    kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": False}
    theirs = torch.nn.functional.interpolate(torch.from_numpy(images), size=size, mode=torch_mode, **kwargs).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


def test_antialias_differs_from_torch_at_the_borders_as_documented():
    """ONNX's antialias replicates edge pixels; torch/PIL renormalise a clipped window. Measured, not assumed."""
    torch = require("torch", reason="torch (the training extra) is the cross-reference here")
    images = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    ours = pp.Resize((3, 3), "linear", antialias=True).transform(images)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(images), size=(3, 3), mode="bilinear", align_corners=False, antialias=True
    ).numpy()
    difference = np.abs(ours - theirs)
    assert 0.01 < difference.max() < 0.1  # the docstring says up to 0.047 on [0, 1] data
    # Interior pixels (whose filter window does not reach the border) agree.
    assert difference[:, :, 1, 1].max() < 1e-5


def test_resize_weights_rows_sum_to_one_and_nearest_picks_one_pixel():
    for mode in ("linear", "cubic"):
        for antialias in (False, True):
            weights = pp.resize_weights(8, 3, mode, antialias)
            np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    nearest = pp.resize_weights(8, 3, "nearest", False)
    assert (nearest.max(axis=1) == 1).all() and nearest.argmax(axis=1).tolist() == [0, 2, 5]


def test_bad_step_settings_are_refused_in_one_sentence():
    for make, words in (
        (lambda: pp.Resize((0, 4)), "size"),
        (lambda: pp.Resize((4, 4), "area"), "interpolation"),
        (lambda: pp.Resize((4, 4), "nearest", antialias=True), "antialias"),
        (lambda: pp.ChannelOrder("RGB", "RGA"), "ChannelOrder"),
        (lambda: pp.Impute("mode"), "strategy"),
        (lambda: pp.Clip(), "bounds"),
        (lambda: pp.MinMaxScale((1, 0)), "low < high"),
        (lambda: pp.Normalize(mean=[0.5]), "both"),
    ):
        with pytest.raises(SpecError, match=words):
            make()
