"""External data must be listed files inside the bundle; anything else is refused before ORT opens it."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, numpy_helper

import paritybundle
from bundle_tools import rehash
from paritybundle.bundle.external_data import mentions_external_data
from paritybundle.errors import BundleInvalid


def _externalize(bundle, location, write_file=True):
    """Move pipeline.onnx's largest initializer to external data at `location`, then rehash."""
    path = bundle / "pipeline.onnx"
    model = onnx.load(str(path))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data = numpy_helper.to_array(tensor)
    if write_file:
        (bundle / location).parent.mkdir(parents=True, exist_ok=True)
        (bundle / location).write_bytes(data.tobytes())
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(data.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _list_file(bundle, relative):
    from paritybundle.bundle.store import read_manifest, sha256_file

    manifest = read_manifest(bundle)
    files = {**manifest.files, relative: sha256_file(bundle / relative)}
    (bundle / "bundle.json").write_text(manifest.model_copy(update={"files": files}).to_json())
    rehash(bundle)


def test_listed_external_data_inside_the_bundle_is_accepted(bundle_copy):
    _externalize(bundle_copy, "weights/conv.bin")
    _list_file(bundle_copy, "weights/conv.bin")
    assert mentions_external_data(bundle_copy / "pipeline.onnx")
    assert paritybundle.check(bundle_copy).passed


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "weights/../../x.bin"])
def test_external_data_outside_the_bundle_is_refused(bundle_copy, location):
    _externalize(bundle_copy, location, write_file=False)
    rehash(bundle_copy)
    with pytest.raises(BundleInvalid, match="outside the bundle"):
        paritybundle.check(bundle_copy)


def test_unlisted_external_data_is_refused(bundle_copy, tmp_path):
    # The file cannot sit in the bundle unlisted (that is an extra file), so point at a name it does not list.
    _externalize(bundle_copy, "weights.bin", write_file=False)
    rehash(bundle_copy)
    with pytest.raises(BundleInvalid, match="does not list"):
        paritybundle.check(bundle_copy)


def test_plain_models_are_not_parsed(digits_bundle):
    assert not mentions_external_data(digits_bundle / "pipeline.onnx")
