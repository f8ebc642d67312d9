"""MLflow: a real tracking server (sqlite backend, artifact store on disk), not a mock.

The digits example is exported with --mlflow, registered through the python_function flavor,
loaded back with mlflow.pyfunc, served with `mlflow models serve`, and pulled with `bundle pull`;
then the bad cases: a server that is down, a run that does not exist, altered artifacts.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import require
from serving_tools import free_port, http, wait_for

mlflow = require("mlflow", reason="mlflow is the mlflow extra: pip install -e '.[dev]'")

import paritybundle  # noqa: E402
from paritybundle.cli import main  # noqa: E402

DIGITS_SPEC = "examples/digits/train.py:make_spec"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """`mlflow server` with a sqlite backend and an artifact store on disk; MLFLOW_TRACKING_URI points at it."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = root / "server.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    uri = f"http://127.0.0.1:{port}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        wait_for(uri + "/health", 120, process=process, log=log)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        yield {"uri": uri, "artifacts": root / "artifacts"}
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def exported(tracking, tmp_path_factory):
    """The digits example exported with --mlflow: the bundle and the run it was logged to."""
    out = tmp_path_factory.mktemp("export") / "digits"
    assert main(["export", DIGITS_SPEC, "-o", str(out), "--mlflow"]) == 0
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1
    return {"bundle": out, "run": runs[0]}


def test_export_logs_the_bundle_with_params_metrics_and_tags(exported):
    run = exported["run"]
    manifest = paritybundle.verify(exported["bundle"]).manifest
    assert run.data.params["paritybundle.name"] == manifest.name
    assert run.data.params["paritybundle.opset"] == str(manifest.stages.opset)
    assert run.data.params["paritybundle.onnxruntime"] == manifest.runtime.onnxruntime_version
    output = manifest.outputs[0].name
    assert run.data.params[f"paritybundle.tolerance.{output}"].startswith("atol=")
    assert run.data.metrics[f"paritybundle.export_error.{output}"] == pytest.approx(
        manifest.export_errors[output].max_abs
    )
    assert run.data.metrics["paritybundle.reference_samples"] == manifest.reference.samples
    import hashlib

    assert (
        run.data.tags["paritybundle.manifest_sha256"]
        == hashlib.sha256((exported["bundle"] / "bundle.json").read_bytes()).hexdigest()
    )
    listed = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "bundle")}
    assert "bundle/bundle.json" in listed and "bundle/pipeline.onnx" in listed


def test_a_check_lands_next_to_the_training_run(exported, capsys):
    run_id = exported["run"].info.run_id
    assert main(["check", str(exported["bundle"]), "--mlflow-run", run_id]) == 0
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.tags["paritybundle.verdict"] == "passed"
    output = paritybundle.verify(exported["bundle"]).manifest.outputs[0].name
    assert run.data.metrics[f"paritybundle.check.{output}.violations"] == 0
    checks = mlflow.MlflowClient().list_artifacts(run_id, "paritybundle-checks")
    files = {a.path.rsplit("/", 1)[1] for a in mlflow.MlflowClient().list_artifacts(run_id, checks[0].path)}
    assert files == {"check.json", "check.html"}
    report = paritybundle.check(exported["bundle"], mlflow_run=run_id)  # the Python API does the same
    assert report.passed


def test_registered_model_loads_through_the_gate_and_predicts_like_the_bundle(exported, tmp_path):
    from paritybundle.mlflow import log_model

    bundle = exported["bundle"]
    info = log_model(bundle, registered_model_name="digits-parity")
    assert str(info.registered_model_version) == "1"
    model = mlflow.pyfunc.load_model("models:/digits-parity/1")
    pixels = np.load(bundle / "reference" / "inputs.npz")["pixels"][:7]
    import pandas as pd

    expected = paritybundle.load(bundle).predict(pixels)
    frame = pd.DataFrame(pixels.reshape(len(pixels), -1))  # a column per feature of the [batch, 64] input
    for given in (frame, pixels):
        got = model.predict(given)
        assert set(got) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(np.asarray(got[name]), expected[name])
    schema = model.metadata.get_input_schema()  # the signature comes from the specs
    assert list(schema.inputs[0].shape) == [-1, 64] and schema.inputs[0].type == np.dtype("float32")


def test_mlflow_models_serve_answers_like_the_bundle(exported, tracking, tmp_path):
    from paritybundle.mlflow import log_model

    bundle = exported["bundle"]
    if not mlflow.MlflowClient().search_model_versions("name='digits-parity'"):
        log_model(bundle, registered_model_name="digits-parity")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                "models:/digits-parity/1",
                "--env-manager",
                "local",
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            # MLflow execs `uvicorn` by name: the one beside this interpreter.
            env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"},
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", 120, process=process, log=log)
        pixels = np.load(bundle / "reference" / "inputs.npz")["pixels"][:3]
        status, answer = http("POST", f"http://127.0.0.1:{port}/invocations", {"inputs": pixels.tolist()})
        assert status == 200, answer
        expected = paritybundle.load(bundle).predict(pixels)
        name = next(iter(expected))
        served = np.asarray(answer["predictions"][name], dtype=np.float32)
        np.testing.assert_array_equal(served, expected[name])
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_pull_downloads_and_verifies_a_registered_bundle(exported, tmp_path, capsys):
    from paritybundle.mlflow import log_model

    if not mlflow.MlflowClient().search_model_versions("name='digits-parity'"):
        log_model(exported["bundle"], registered_model_name="digits-parity")
    out = tmp_path / "pulled"
    assert main(["pull", "models:/digits-parity/1", "-o", str(out)]) == 0
    assert "files verified" in capsys.readouterr().out
    assert (out / "bundle.json").read_bytes() == (exported["bundle"] / "bundle.json").read_bytes()
    run_uri = f"runs:/{exported['run'].info.run_id}/bundle"
    assert main(["pull", run_uri, "-o", str(tmp_path / "from-run")]) == 0


def test_altered_registered_artifacts_are_refused_by_pull_and_load(exported, tracking, tmp_path, capsys):
    from paritybundle.errors import BundleInvalid
    from paritybundle.mlflow import log_model

    info = log_model(exported["bundle"], registered_model_name="digits-altered")
    stored = [
        p
        for p in tracking["artifacts"].rglob("pipeline.onnx")
        if info.model_id in str(p) or (info.run_id and info.run_id in str(p))
    ]
    assert stored, list(tracking["artifacts"].rglob("pipeline.onnx"))
    for path in stored:
        data = bytearray(path.read_bytes())
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))
    out = tmp_path / "pulled"
    assert main(["pull", "models:/digits-altered/1", "-o", str(out)]) == 3
    assert "does not match its sha256" in capsys.readouterr().err and not out.exists()
    with pytest.raises(BundleInvalid, match="does not match its sha256"):
        mlflow.pyfunc.load_model("models:/digits-altered/1")


def test_a_tracking_server_that_is_down_is_exit_2_before_anything_is_written(tracking, tmp_path, capsys, monkeypatch):
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    mlflow.set_tracking_uri(down)  # the fixture set the module's URI, which outranks the environment
    out = tmp_path / "never"
    try:
        assert main(["export", DIGITS_SPEC, "-o", str(out), "--mlflow"]) == 2
    finally:
        mlflow.set_tracking_uri(tracking["uri"])
    assert f"the MLflow tracking server at {down} does not answer" in capsys.readouterr().err.replace("\n", " ")
    assert not out.exists()


def test_a_run_that_does_not_exist_is_exit_2(exported, capsys):
    assert main(["check", str(exported["bundle"]), "--mlflow-run", "0" * 32]) == 2
    assert f"MLflow run '{'0' * 32}' does not exist" in capsys.readouterr().err.replace("\n", " ")


def test_pull_refuses_an_existing_target_and_a_uri_without_a_bundle(exported, tmp_path, capsys):
    existing = tmp_path / "there"
    existing.mkdir()
    run_id = exported["run"].info.run_id
    assert main(["pull", f"runs:/{run_id}/bundle", "-o", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err
    mlflow.MlflowClient().log_text(run_id, "not a bundle", "notes/readme.txt")
    assert main(["pull", f"runs:/{run_id}/notes", "-o", str(tmp_path / "notes")]) == 2
    assert "holds no paritybundle bundle" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "notes").exists()


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if "paritybundle-pull" in p.name]


@pytest.mark.parametrize("uri", ["file:///etc", "/etc", "mlflow-artifacts:/0", "s3://bucket/bundle", "runs:/", ""])
def test_pull_refuses_a_uri_that_is_not_a_registry_or_a_run(tmp_path, capsys, uri):
    """Was (round 3, item 8): `pull file:///etc -o X` copied /etc and left part of it beside X."""
    from bundle_tools import HOSTILE_COUNTS

    HOSTILE_COUNTS["round 3, pull"] = HOSTILE_COUNTS.get("round 3, pull", 0) + 1
    assert main(["pull", uri, "-o", str(tmp_path / "x")]) == 2
    assert "is not a registry or run URI" in capsys.readouterr().err.replace("\n", " ")
    assert list(tmp_path.iterdir()) == []


def test_pull_into_a_path_under_a_file_is_exit_2(exported, tmp_path, capsys):
    """Was: `pull -o FILE/x` was NotADirectoryError, exit 70."""
    from bundle_tools import HOSTILE_COUNTS

    HOSTILE_COUNTS["round 3, pull"] = HOSTILE_COUNTS.get("round 3, pull", 0) + 1
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run_id = exported["run"].info.run_id
    assert main(["pull", f"runs:/{run_id}/bundle", "-o", str(blocker / "x")]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "is not a directory that can be made" in err and "Traceback" not in err


def test_pull_from_a_store_holding_a_symlinked_folder_is_exit_2_and_leaves_nothing(
    exported, tracking, tmp_path, capsys
):
    """Was: requests.HTTPError, exit 70, and a paritybundle-pull-* folder left beside the target."""
    from bundle_tools import HOSTILE_COUNTS

    HOSTILE_COUNTS["round 3, pull"] = HOSTILE_COUNTS.get("round 3, pull", 0) + 1
    run_id = exported["run"].info.run_id
    (run_dir,) = [p for p in tracking["artifacts"].rglob(run_id) if p.is_dir()] or [None]
    assert run_dir is not None, list(tracking["artifacts"].rglob("*"))[:20]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for pulling")
    artifacts = run_dir / "artifacts" if (run_dir / "artifacts").is_dir() else run_dir
    (artifacts / "linked").symlink_to(outside, target_is_directory=True)
    target_dir = tmp_path / "pulls"
    target_dir.mkdir()
    code = main(["pull", f"runs:/{run_id}/linked", "-o", str(target_dir / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "cannot be downloaded from" in err.replace("\n", " "), err  # the store's own error (an HTTP 500)
    assert list(target_dir.iterdir()) == []
