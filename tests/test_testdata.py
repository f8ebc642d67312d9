"""`bundle testdata`: the reference set as ONNX test data and Polygraphy JSON, read back by
those tools' own readers; and `bundle check --references DIR`."""

from __future__ import annotations

import unittest

import numpy as np
import onnx
import pytest
from conftest import require  # noqa: E402
from onnx import numpy_helper

from paritybundle.bundle.store import read_manifest
from paritybundle.cli import main
from paritybundle.commands.testdata import write_testdata


def reference_arrays(bundle, which):
    with np.load(bundle / f"reference/{which}.npz", allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def graph_inputs(path):
    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers], [o.name for o in model.graph.output]


@pytest.mark.parametrize("bundle_fixture", ["wine_bundle", "digits_bundle"])
def test_onnx_reads_back_identical_arrays_in_graph_order(bundle_fixture, request, tmp_path):
    bundle = request.getfixturevalue(bundle_fixture)
    result = write_testdata(bundle, tmp_path / "td")
    assert result.sets == 1 and result.samples == read_manifest(bundle).reference.samples
    inputs, outputs = reference_arrays(bundle, "inputs"), reference_arrays(bundle, "outputs")
    input_names, output_names = graph_inputs(tmp_path / "td" / "model.onnx")
    assert output_names == [o.name for o in read_manifest(bundle).outputs]
    for kind, names, arrays in (("input", input_names, inputs), ("output", output_names, outputs)):
        for position, name in enumerate(names):
            tensor = onnx.load_tensor(str(tmp_path / "td" / "test_data_set_0" / f"{kind}_{position}.pb"))
            assert tensor.name == name
            read = numpy_helper.to_array(tensor)
            expected = arrays[name]
            if expected.dtype.kind == "U":
                assert read.dtype == object and read.tolist() == expected.tolist()
            else:
                assert read.dtype == expected.dtype
                np.testing.assert_array_equal(read, expected)  # identical, NaN where NaN


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the runner builds onnx's own node cases on import
def test_onnx_backend_test_runner_passes_on_the_directory_with_onnxruntime(wine_bundle, tmp_path):
    """onnx's own backend test runner, with ONNX Runtime as the backend, reads and passes the set."""
    import onnx.backend.test.runner as runner_module
    import onnxruntime.backend
    from onnx.backend.test.case.test_case import TestCase

    folder = write_testdata(wine_bundle, tmp_path / "td").path
    tol = read_manifest(wine_bundle).tolerance.default
    runner = runner_module.Runner(onnxruntime.backend, parent_module=__name__)
    # The runner has no public entry for one directory; this is how its own model tests are registered.
    runner._add_model_test(
        TestCase(
            name="test_paritybundle_wine",
            model_name="wine",
            url=None,
            model_dir=str(folder),
            model=None,
            data_sets=None,
            kind="real",
            rtol=tol.rtol,
            atol=tol.atol,
        ),
        "Real",
    )
    suite = unittest.TestSuite(
        case(name)
        for case in runner.test_cases.values()
        for name in unittest.defaultTestLoader.getTestCaseNames(case)
        if name == "test_paritybundle_wine_cpu"
    )
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    assert result.testsRun == 1 and result.wasSuccessful(), result.failures + result.errors


def test_polygraphy_loads_the_inputs_and_the_run_results(wine_bundle, tmp_path):
    require("polygraphy", reason="Polygraphy is the reader under test (a dev dependency)")
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    folder = write_testdata(wine_bundle, tmp_path / "td", set_size=20).path
    inputs, outputs = reference_arrays(wine_bundle, "inputs"), reference_arrays(wine_bundle, "outputs")
    feeds = load_json(str(folder / "polygraphy_inputs.json"))
    samples = read_manifest(wine_bundle).reference.samples  # 54 test rows and the probe rows export added
    assert len(feeds) == -(-samples // 20)
    for name, array in inputs.items():
        np.testing.assert_array_equal(np.concatenate([feed[name] for feed in feeds]), array)
    results = RunResults.load(str(folder / "polygraphy_outputs.json"))
    runner, iterations = results[0]
    assert runner == "paritybundle-research" and len(iterations) == len(feeds)
    for name, array in outputs.items():
        np.testing.assert_array_equal(np.concatenate([np.asarray(it[name]) for it in iterations]), array)


def test_check_accepts_a_test_data_directory_as_the_reference_source(wine_bundle, tmp_path, capsys):
    folder = write_testdata(wine_bundle, tmp_path / "td", set_size=10).path
    samples = read_manifest(wine_bundle).reference.samples
    assert len(list(folder.glob("test_data_set_*"))) == -(-samples // 10)
    assert main(["check", str(wine_bundle), "--references", str(folder), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "references from ONNX test data" in out and f"{samples} samples" in out
    # A research output changed in the test data: parity fails, exit 1.
    path = folder / "test_data_set_2" / "output_0.pb"
    tensor = onnx.load_tensor(str(path))
    array = numpy_helper.to_array(tensor) + 0.01
    path.write_bytes(numpy_helper.from_array(array, tensor.name).SerializeToString())
    assert main(["check", str(wine_bundle), "--references", str(folder)]) == 1
    assert "output 'scores' failed" in capsys.readouterr().out


def test_test_data_of_another_model_or_no_test_data_is_a_clear_error(wine_bundle, digits_bundle, tmp_path, capsys):
    folder = write_testdata(wine_bundle, tmp_path / "td").path
    assert main(["check", str(digits_bundle), "--references", str(folder)]) == 3
    assert "test_data_set_0 has 14 input tensors, the bundle's graph has 1 (pixels)" in capsys.readouterr().err
    assert main(["check", str(digits_bundle), "--references", str(tmp_path)]) == 2
    assert "holds no test_data_set_K directories" in capsys.readouterr().err
    assert main(["check", str(digits_bundle), "--references", str(folder), "--url", "http://127.0.0.1:9"]) == 2


def test_testdata_refuses_to_overwrite_without_force(digits_bundle, tmp_path, capsys):
    (tmp_path / "td").mkdir()
    assert main(["testdata", str(digits_bundle), "-o", str(tmp_path / "td")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["testdata", str(digits_bundle), "-o", str(tmp_path / "td"), "--force"]) == 0
    assert (tmp_path / "td" / "test_data_set_0" / "input_0.pb").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".td.")]  # no staging left behind


def test_hostile_test_data_is_exit_3_with_the_file_named(digits_bundle, tmp_path, capsys):
    """Corrupt, mistyped or misshapen tensors in a test data directory are the directory's fault, never a crash."""
    import os

    cases = {
        "random bytes": lambda folder: (folder / "input_0.pb").write_bytes(os.urandom(64)),
        "wrong dtype": lambda folder: (folder / "input_0.pb").write_bytes(
            numpy_helper.from_array(np.full((100, 64), "x", dtype=object), "pixels").SerializeToString()
        ),
        "wrong name": lambda folder: (folder / "input_0.pb").write_bytes(
            numpy_helper.from_array(np.zeros((3, 64), np.float32), "other").SerializeToString()
        ),
        "output shape": lambda folder: (folder / "output_0.pb").write_bytes(
            numpy_helper.from_array(np.zeros((3, 7), np.float32), "logits").SerializeToString()
        ),
        "missing output": lambda folder: (folder / "output_0.pb").unlink(),
    }
    for label, corrupt in cases.items():
        folder = write_testdata(digits_bundle, tmp_path / label.replace(" ", "-"), set_size=100).path
        corrupt(folder / "test_data_set_1")
        code = main(["check", str(digits_bundle), "--references", str(folder)])
        err = capsys.readouterr().err
        assert code == 3, (label, err)
        assert "test_data_set_1" in err and "Traceback" not in err, (label, err)


def test_a_pipeline_that_does_not_match_its_manifest_is_exit_3(digits_bundle, tmp_path, capsys):
    """bundle testdata reads the graph itself (no session): a re-hashed corrupt or mismatched pipeline is refused."""
    import json

    from bundle_tools import copy_bundle, rehash

    corrupt = copy_bundle(digits_bundle, tmp_path / "corrupt")
    (corrupt / "pipeline.onnx").write_bytes(b"\x08\x07\x12\x00garbage")
    rehash(corrupt)
    renamed = copy_bundle(digits_bundle, tmp_path / "renamed")
    manifest = json.loads((renamed / "bundle.json").read_text())
    manifest["outputs"][0]["name"] = "probabilities"
    manifest["export_errors"] = {"probabilities": manifest["export_errors"]["logits"]}
    for section in ("per_output", "scales"):  # the output's own tolerance, under its new name
        # The one output's entry, if the section has one, under the output's new name.
        entries = list(manifest["tolerance"][section].values())
        manifest["tolerance"][section] = {"probabilities": entries[0]} if entries else {}
    (renamed / "bundle.json").write_text(json.dumps(manifest))
    for bundle, words in ((corrupt, "not a readable ONNX model"), (renamed, "but the manifest declares")):
        assert main(["testdata", str(bundle), "-o", str(tmp_path / f"td-{bundle.name}")]) == 3
        err = capsys.readouterr().err
        assert "pipeline.onnx" in err and words in err and "Traceback" not in err
        assert not (tmp_path / f"td-{bundle.name}").exists()
