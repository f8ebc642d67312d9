"""bundle.json is strict: unknown keys, missing keys, bad paths and other versions are refused."""

from __future__ import annotations

import json

import pytest

from paritybundle.bundle.manifest import parse_manifest
from paritybundle.errors import BundleInvalid


@pytest.fixture
def manifest_data(digits_bundle):
    return json.loads((digits_bundle / "bundle.json").read_text())


def _parse(data):
    return parse_manifest(json.dumps(data).encode())


def test_manifest_of_a_real_export_parses(manifest_data):
    manifest = _parse(manifest_data)
    assert manifest.name == "digits" and manifest.reference.device == "cpu"
    assert set(manifest.files) >= {"pipeline.onnx", "model.onnx", "reference/inputs.npz"}


def test_manifest_rejects_unknown_field(manifest_data):
    manifest_data["surprise"] = 1
    with pytest.raises(BundleInvalid, match="surprise: Extra inputs are not permitted"):
        _parse(manifest_data)


def test_manifest_rejects_unknown_nested_field(manifest_data):
    manifest_data["tolerance"]["default"]["fudge"] = 2
    with pytest.raises(BundleInvalid, match="tolerance.default.fudge"):
        _parse(manifest_data)


def test_manifest_rejects_missing_key(manifest_data):
    del manifest_data["outputs"]
    with pytest.raises(BundleInvalid, match="outputs: Field required"):
        _parse(manifest_data)


def test_manifest_rejects_other_format_version(manifest_data):
    manifest_data["format_version"] = 2
    with pytest.raises(BundleInvalid, match="format_version 2"):
        _parse(manifest_data)


@pytest.mark.parametrize("path", ["../escape.onnx", "/etc/passwd", "a/../../b", "./x", "a\\b"])
def test_manifest_rejects_paths_outside_the_bundle(manifest_data, path):
    manifest_data["files"][path] = manifest_data["files"]["model.onnx"]
    with pytest.raises(BundleInvalid, match="plain relative path"):
        _parse(manifest_data)


def test_manifest_rejects_a_stage_not_listed_in_files(manifest_data):
    del manifest_data["files"]["model.onnx"]
    with pytest.raises(BundleInvalid, match="model.onnx is referenced but not listed"):
        _parse(manifest_data)


def test_manifest_rejects_non_json():
    with pytest.raises(BundleInvalid, match="not valid JSON"):
        parse_manifest(b"{not json")


def test_optional_fields_are_written_only_when_set(manifest_data):
    """A bundle that needs none of them stays what older readers (which refuse unknown keys) read."""
    manifest = parse_manifest(json.dumps(manifest_data).encode())
    written = json.loads(manifest.to_json())
    assert "approximation" not in written["tolerance"] and "groups" not in written["reference"]
    assert "custom_ops" not in written["runtime"]
    assert all(key not in spec for spec in written["inputs"] for key in ("research_dtype", "max_dims", "text"))
    # Set, they are written, and read back the same.
    spec = manifest.inputs[0].model_copy(update={"max_dims": {"batch": 8}, "research_dtype": "float64"})
    runtime = manifest.runtime.model_copy(update={"custom_ops": ["onnxruntime-extensions"]})
    assert json.loads(spec.model_dump_json())["max_dims"] == {"batch": 8}
    assert json.loads(spec.model_dump_json())["research_dtype"] == "float64"
    assert json.loads(runtime.model_dump_json())["custom_ops"] == ["onnxruntime-extensions"]
    assert parse_manifest(manifest.to_json().encode()) == manifest
