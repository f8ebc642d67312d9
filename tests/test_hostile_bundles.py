"""Hostile bundles from the outside red-team pass (issue 17): each case failed on the tree before
the fix; each now ends in one sentence with the documented exit code, and nothing leaks."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from bundle_tools import copy_bundle, rehash
from paritybundle.cli import main


def _external_weight(bundle: Path, location: str) -> None:
    """Point the pipeline's first initializer at external data ``location`` and re-hash the manifest."""
    model = onnx.load(str(bundle / "pipeline.onnx"))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    (bundle / "pipeline.onnx").write_bytes(model.SerializeToString())
    rehash(bundle)


@pytest.mark.parametrize("where", ["climbing", "absolute"])
def test_testdata_never_follows_external_data_out_of_the_bundle(digits_bundle, tmp_path, where, capsys):
    """Was: exit 0, the file read and written outside OUT (climbing), or exit 70 SameFileError (absolute)."""
    secret = tmp_path / "x" / "SECRET.txt"
    secret.parent.mkdir()
    secret.write_text("CI_TOKEN=hunter2")
    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    # From the bundle, ../x/SECRET.txt is the secret; from the deeper output folder it lands in out/x/.
    _external_weight(bundle, "../x/SECRET.txt" if where == "climbing" else str(secret))
    out = tmp_path / "out" / "td"
    assert main(["testdata", str(bundle), "-o", str(out)]) == 3
    assert "outside the bundle" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("SECRET.txt")) == [secret]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_every_command_reading_a_graph_refuses_external_data_outside_the_bundle(digits_bundle, tmp_path, capsys):
    bundle = copy_bundle(digits_bundle, tmp_path / "b")
    _external_weight(bundle, "../../etc/passwd")
    for command in (["check", str(bundle)], ["diff", str(digits_bundle), str(bundle)],
                    ["testdata", str(bundle), "-o", str(tmp_path / "td")], ["serve", str(bundle), "--port", "0"]):
        assert main(command) == 3, command
        assert "outside the bundle" in capsys.readouterr().err, command
    shutil.rmtree(bundle)
