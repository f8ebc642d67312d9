"""Frozen preprocessing beyond one shape and one kind of input (issue 28, items 6 and 7): images of any size
through one Resize, and preprocessing for some inputs while the others pass through to the model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import _load_example, require  # noqa: E402

torch = require("torch")

import paritybundle  # noqa: E402
from paritybundle.bundle.store import read_manifest  # noqa: E402
from paritybundle.cli import main  # noqa: E402
from paritybundle.errors import SpecError  # noqa: E402
from paritybundle.training import export_spec  # noqa: E402

images = _load_example("digit_images")


def taller_and_wider(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.repeat(np.repeat(x, rows, axis=1), cols, axis=2)


@pytest.fixture(scope="module")
def two_size_spec():
    spec = images.make_spec(epochs=2)
    x = spec.reference_inputs["image"]
    spec.reference_inputs = [{"image": x[:60]}, {"image": taller_and_wider(x[60:120], 2, 3)}]
    return spec


@pytest.fixture(scope="module")
def two_size_bundle(two_size_spec, tmp_path_factory):
    return export_spec(two_size_spec, tmp_path_factory.mktemp("images") / "bundle").path


def test_reference_images_of_several_sizes_go_through_one_frozen_resize(two_size_bundle, capsys):
    manifest = read_manifest(two_size_bundle)
    assert manifest.inputs[0].shape == ["batch", "image_dim1", "image_dim2", 3]
    assert [g.shapes["image"] for g in manifest.reference.groups] == [[8, 8, 3], [16, 24, 3]]
    assert all(g.features for g in manifest.reference.groups)  # each group keeps its research features
    capsys.readouterr()
    assert main(["check", str(two_size_bundle)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "column image -> pixels" in out and "PARITY HOLDS" in out


def test_an_image_of_a_size_never_seen_is_resized_as_research_resizes_it(two_size_bundle, two_size_spec):
    odd = taller_and_wider(two_size_spec.reference_inputs[0]["image"][:5], 3, 1)[:, :, :7]  # 24 x 7
    served = paritybundle.load(two_size_bundle).predict({"image": odd})["logits"]
    with torch.no_grad():
        research = two_size_spec.model(torch.from_numpy(two_size_spec.preprocess.transform(odd))).numpy()
    np.testing.assert_allclose(served, research, atol=1e-4, rtol=1e-4)


def test_groups_whose_features_differ_in_shape_are_refused(tmp_path):
    from paritybundle import preprocess as pp

    spec = images.make_spec(epochs=1)
    x = spec.reference_inputs["image"]
    spec.preprocess = pp.Pipeline([pp.ToFloatCHW(), pp.Scale(1 / 255)], input="image", output="pixels").fit(x)
    spec.reference_inputs = [{"image": x[:10]}, {"image": taller_and_wider(x[10:20], 2, 2)}]
    with pytest.raises(SpecError, match="features of different shapes from the reference groups"):
        export_spec(spec, tmp_path / "b")


# --- preprocessing for some inputs, the others passed through ---------------------------------------------


class ImageAndAge(torch.nn.Module):  # type: ignore[name-defined]  # torch from require(), a value
    """Reads the preprocessed image (``pixels``) and a raw tabular column (``age``) by name."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 16 * 16 + 1, 10)

    def forward(self, pixels, age):
        return self.head(torch.cat([torch.relu(self.conv(pixels)).flatten(1), age], dim=1))


class ImageAndAgeInOrder(ImageAndAge):
    """The same, its parameters named otherwise: the features arrive in order (the image's, then age)."""

    def forward(self, x, years):
        return super().forward(x, years)


@pytest.mark.parametrize("model_class", [ImageAndAge, ImageAndAgeInOrder])
def test_an_image_is_preprocessed_and_a_tabular_column_passes_through(model_class, tmp_path, capsys):
    x_train, x_test, _, _ = images.load_images()
    pre = images.make_preprocessing(x_train)
    age = np.random.default_rng(0).uniform(18, 90, (80, 1)).astype(np.float32)
    model = model_class().eval()
    bundle = export_spec(
        paritybundle.ExportSpec(
            model=model,
            preprocess=pre,
            name="mixed",
            output_names=["logits"],
            reference_inputs={"image": x_test[:80], "age": age},
        ),
        tmp_path / "b",
    ).path
    manifest = read_manifest(bundle)
    assert sorted(s.name for s in manifest.inputs) == ["age", "image"]
    columns = {c.input: c for c in manifest.preprocessing.columns}
    assert columns["age"].steps[0].kind == "passthrough" and columns["age"].outputs == ["age"]
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "column image -> pixels" in out and "column age -> age" in out and "PARITY HOLDS" in out
    served = paritybundle.load(bundle).predict({"image": x_test[80:85], "age": age[:5] + 1})["logits"]
    with torch.no_grad():
        research = model(torch.from_numpy(pre.transform(x_test[80:85])), torch.from_numpy(age[:5] + 1)).numpy()
    np.testing.assert_allclose(served, research, atol=1e-5, rtol=1e-4)


class Tabular(torch.nn.Module):  # type: ignore[name-defined]  # torch from require(), a value
    def __init__(self, width: int):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(width + 2, 3)

    def forward(self, features, store, weekday):
        return self.layer(torch.cat([features, store.float(), weekday], dim=1))


def test_columns_preprocess_some_columns_and_the_rest_pass_through(tmp_path, capsys):
    from paritybundle import preprocess as pp

    rng = np.random.default_rng(1)
    raw = {
        "price": rng.lognormal(size=200).astype(np.float32),
        "region": rng.choice(["n", "s", "e"], 200),
        "store": rng.integers(0, 50, (200, 1)),
        "weekday": rng.integers(0, 7, (200, 1)).astype(np.float32),
    }
    pre = pp.Columns({"price": [pp.Log1p(), pp.Standardize()], "region": [pp.OneHot()]}).fit(raw)
    bundle = export_spec(
        paritybundle.ExportSpec(model=Tabular(5).eval(), preprocess=pre, reference_inputs=raw, name="tabular"),
        tmp_path / "b",
    ).path
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "column price -> features" in out and "column store -> store" in out and "PARITY HOLDS" in out
    inputs = {s.name: s for s in read_manifest(bundle).inputs}
    assert inputs["store"].dtype == "int64" and inputs["region"].dtype == "string"


def test_a_tokenized_text_and_a_numeric_feature_reach_one_model(tmp_path, capsys):
    """Text through the frozen tokenizer, a numeric feature passed through beside the token inputs."""
    require("transformers", reason="transformers is a dev extra")
    require("onnxruntime_extensions", reason="onnxruntime-extensions is in the text extra")
    text = _load_example("text")

    class TextAndPrice(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert, self.price = bert, torch.nn.Linear(1, 2)

        def forward(self, input_ids, token_type_ids, attention_mask, price):
            logits = self.bert(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask).logits
            return logits + self.price(price)

    spec = text.make_spec(steps=1)
    sentences = spec.reference_inputs["text"][:40]
    price = np.linspace(1, 40, 40, dtype=np.float32)[:, None]
    spec.model, spec.output_names = TextAndPrice(spec.model).eval(), ["logits"]
    spec.reference_inputs = {
        "text": sentences + ["bad \x00 text"],
        "price": np.concatenate([price, np.zeros((1, 1), np.float32)]),
    }
    bundle = export_spec(spec, tmp_path / "b").path  # the NUL text is left out, and its price with it
    manifest = read_manifest(bundle)
    probes = len(manifest.coverage.probe_reasons)
    assert manifest.reference.samples == 40 + probes
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "column text -> input_ids" in out and "column price -> price" in out and "PARITY HOLDS" in out
    served = paritybundle.load(bundle).predict({"text": ["A great film!"], "price": np.array([[3.0]], np.float32)})
    tokens = spec.preprocess(
        ["A great film!"], padding="max_length", truncation=True, max_length=text.MAX_LENGTH, return_tensors="pt"
    )
    with torch.no_grad():
        research = spec.model(**tokens, price=torch.tensor([[3.0]])).numpy()
    np.testing.assert_allclose(served["logits"], research, atol=1e-5, rtol=1e-4)


def test_a_torch_preprocessing_module_reads_the_inputs_its_forward_names(tmp_path, capsys):
    class Scale(torch.nn.Module):
        def forward(self, image):
            return image.float() / 255.0

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(8 * 8 * 3 + 1, 2)

        def forward(self, features, age):
            return self.layer(torch.cat([features.flatten(1), age], dim=1))

    _, x_test, _, _ = images.load_images()
    age = np.linspace(20, 60, 40, dtype=np.float32)[:, None]
    bundle = export_spec(
        paritybundle.ExportSpec(
            model=Model().eval(),
            preprocess=Scale(),
            name="torch-pre",
            reference_inputs={"image": x_test[:40], "age": age},
        ),
        tmp_path / "b",
    ).path
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 0
    assert "column age -> age" in " ".join(capsys.readouterr().out.split())


def test_a_scikit_learn_transformer_reads_the_columns_it_was_fitted_on_and_the_rest_pass_through(tmp_path, capsys):
    pd = require("pandas", reason="scikit-learn fits named columns on a DataFrame (the sklearn extra)")
    require("skl2onnx", reason="the sklearn extra converts scikit-learn preprocessing")
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {"height": rng.normal(170, 10, 120).astype(np.float32), "weight": rng.normal(70, 8, 120).astype(np.float32)}
    )
    scaler = ColumnTransformer([("scale", StandardScaler(), ["height", "weight"])]).fit(frame)
    visits = rng.integers(0, 9, (120, 1)).astype(np.float32)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(3, 2)

        def forward(self, features, visits):
            return self.layer(torch.cat([features, visits], dim=1))

    raw = {"height": frame["height"].to_numpy(), "weight": frame["weight"].to_numpy(), "visits": visits}
    bundle = export_spec(
        paritybundle.ExportSpec(model=Model().eval(), preprocess=scaler, reference_inputs=raw, name="sklearn-partial"),
        tmp_path / "b",
    ).path
    capsys.readouterr()
    assert main(["check", str(bundle)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "column visits -> visits" in out and "PARITY HOLDS" in out
