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
