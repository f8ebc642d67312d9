"""`bundle score --engine local`: scores equal research's, the gate comes first, bad inputs stop it with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require

require("pyarrow")
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from scoring_tools import (  # noqa: E402
    expected_outputs,
    fake_numpy_path,
    reference_table,
    scored_outputs,
    write_parquet,
)

from bundle_tools import copy_bundle, perturb_weights, rehash  # noqa: E402
from paritybundle.cli import main  # noqa: E402
from paritybundle.commands.score import score  # noqa: E402
from paritybundle.errors import ParityFailure, UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def assert_research(bundle: Path, outputs: dict[str, np.ndarray], repeat: int = 1) -> None:
    for name, research in expected_outputs(bundle, repeat).items():
        np.testing.assert_allclose(outputs[name], research, rtol=1e-5, atol=1e-5)


def test_local_scores_are_research_outputs_with_ids_kept_columns_and_a_report(wine_bundle, tmp_path):
    source = write_parquet(reference_table(wine_bundle, repeat=3), tmp_path / "rows", files=3)
    (source / "_SUCCESS").write_text("")  # what Spark leaves beside its parts: not an input
    out = tmp_path / "scores"
    code = main(
        [
            "score",
            str(wine_bundle),
            str(source),
            "-o",
            str(out),
            "--keep",
            "customer",
            "--batch-rows",
            "50",
            "--json",
            str(tmp_path / "report.json"),
        ]
    )
    assert code == 0
    table, outputs = scored_outputs(out, wine_bundle)
    rows = table.num_rows
    assert table.schema.names == ["row_id", "customer", "scores"]
    assert table.column("row_id").to_pylist() == list(range(rows))  # positions in file order
    assert table.column("customer").to_pylist() == [f"c{i:06d}" for i in range(rows)]
    assert_research(wine_bundle, outputs, repeat=3)
    report = json.loads((tmp_path / "report.json").read_text())
    beside = json.loads((out / "_paritybundle_score.json").read_text())
    assert report["passed"] and beside["rows_scored"] == report["rows_scored"] == rows
    [worker] = report["workers"]
    assert worker["verdict"] == "passed" and worker["rows_scored"] == rows and worker["reference_samples"] > 0
    assert worker["onnxruntime_version"] and worker["host"] and worker["engine"] == "local"
    assert not list(tmp_path.glob(".scores.partial-*"))


def test_one_parquet_file_out_and_csv_in_with_an_id_column(wine_bundle, tmp_path):
    table = reference_table(wine_bundle)
    frame = table.to_pandas()
    frame.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "scores.parquet"
    report = score(wine_bundle, tmp_path / "rows.csv", out, id_column="customer")
    assert report.passed and out.is_file()
    scored = pq.read_table(out)
    assert scored.schema.names == ["customer", "scores"]  # the id column leads, no row_id is made
    _, outputs = scored_outputs(out, wine_bundle)
    assert_research(wine_bundle, outputs)


def test_list_columns_for_image_inputs_and_a_wrong_length_names_column_and_row(digits_bundle, tmp_path):
    source = write_parquet(reference_table(digits_bundle), tmp_path / "digits.parquet")
    score(digits_bundle, source, tmp_path / "scores")
    _, outputs = scored_outputs(tmp_path / "scores", digits_bundle)
    assert_research(digits_bundle, outputs)

    ragged = pa.table({"pixels": pa.array([[0.0] * 64, [0.0] * 64, [0.0] * 63])})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(UsageError, match=r"column 'pixels' holds 63 values at row 2, but input 'pixels' takes 64"):
        score(digits_bundle, tmp_path / "ragged.parquet", tmp_path / "ragged-scores")
    assert not (tmp_path / "ragged-scores").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.drop_columns(["hue"]), r"has no column 'hue', an input of the model"),
        (
            lambda t: t.set_column(t.schema.get_field_index("proline"), "proline", pa.array(["x"] * t.num_rows)),
            r"column 'proline' of .* holds string, but input 'proline' is float32",
        ),
        (
            lambda t: t.set_column(t.schema.get_field_index("color_band"), "color_band", pa.array(range(t.num_rows))),
            r"column 'color_band' of .* holds int64, but input 'color_band' is string",
        ),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("color_band"),
                "color_band",
                pa.array(["red"] * 5 + [None] + ["red"] * (t.num_rows - 6)),
            ),
            r"rows\.parquet, rows 0\.\.\d+: column 'color_band' has a missing value at row 5",
        ),
    ],
)
def test_a_missing_or_mistyped_column_is_exit_2_naming_it_and_nothing_is_written(
    wine_bundle, tmp_path, change, message, capsys
):
    source = write_parquet(change(reference_table(wine_bundle)), tmp_path / "rows.parquet")
    out = tmp_path / "scores"
    assert main(["score", str(wine_bundle), str(source), "-o", str(out)]) == 2
    assert __import__("re").search(message, " ".join(capsys.readouterr().err.split()))
    assert not out.exists() and not list(tmp_path.glob(".scores.partial-*"))


def test_unreadable_inputs_are_exit_2(wine_bundle, tmp_path, capsys):
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "rows.txt").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    for source, message in (
        (tmp_path / "junk.parquet", "cannot be read as a table"),
        (tmp_path / "rows.txt", "neither Parquet"),
        (tmp_path / "empty", "holds no Parquet"),
        (tmp_path / "absent", "does not exist"),
        (Path("/dev/zero"), "is neither a file nor a folder"),
    ):
        assert main(["score", str(wine_bundle), str(source), "-o", str(tmp_path / "scores")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "scores").exists()


def test_a_tampered_bundle_is_exit_3_before_any_row(digits_bundle, tmp_path, capsys):
    bundle = copy_bundle(digits_bundle, tmp_path / "bundle")
    with open(bundle / "model.onnx", "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    source = write_parquet(reference_table(digits_bundle), tmp_path / "rows.parquet")
    assert main(["score", str(bundle), str(source), "-o", str(tmp_path / "scores")]) == 3
    assert "model.onnx" in capsys.readouterr().err
    assert not (tmp_path / "scores").exists()


def test_a_bundle_failing_parity_here_is_exit_1_naming_the_worker_and_nothing_is_written(
    digits_bundle, tmp_path, capsys
):
    bundle = copy_bundle(digits_bundle, tmp_path / "bundle")
    perturb_weights(bundle, 0.05)
    rehash(bundle)
    source = write_parquet(reference_table(digits_bundle), tmp_path / "rows.parquet")
    with pytest.raises(ParityFailure, match=r"worker local on node .* refused to score: .*logits") as caught:
        score(bundle, source, tmp_path / "scores")
    failed = caught.value.report
    assert not failed.passed and failed.exit_code == 1 and failed.workers[0].verdict == "failed"
    assert failed.workers[0].rows_scored == 0 and not (tmp_path / "scores").exists()
    assert (
        main(["score", str(bundle), str(source), "-o", str(tmp_path / "scores"), "--json", str(tmp_path / "r.json")])
        == 1
    )
    assert json.loads((tmp_path / "r.json").read_text())["workers"][0]["exit_code"] == 1


def test_a_drifted_environment_is_exit_4_and_its_report_says_where(wine_bundle, tmp_path):
    """The worker's environment reports another numpy major version (a distribution's metadata first on
    its path): the gate refuses before the first row."""
    source = write_parquet(reference_table(wine_bundle), tmp_path / "rows.parquet")
    env = dict(os.environ, PYTHONPATH=str(fake_numpy_path(tmp_path)))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "paritybundle.cli",
            "score",
            str(wine_bundle),
            str(source),
            "-o",
            str(tmp_path / "scores"),
            "--json",
            str(tmp_path / "r.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 4, run.stderr
    assert "numpy" in run.stderr and "refused to score" in run.stderr and "Traceback" not in run.stderr
    [worker] = json.loads((tmp_path / "r.json").read_text())["workers"]
    assert worker["verdict"] == "failed" and worker["exit_code"] == 4 and worker["rows_scored"] == 0
    assert not (tmp_path / "scores").exists()


def test_output_is_replaced_only_with_force_and_only_by_a_job_that_succeeded(
    wine_bundle, digits_bundle, tmp_path, capsys
):
    source = write_parquet(reference_table(wine_bundle), tmp_path / "rows.parquet")
    out = tmp_path / "scores"
    assert main(["score", str(wine_bundle), str(source), "-o", str(out)]) == 0
    assert main(["score", str(wine_bundle), str(source), "-o", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    before = sorted(p.name for p in out.iterdir())
    # A job that fails (the digits bundle takes pixels, not wine's columns) leaves the old scores whole.
    assert main(["score", str(digits_bundle), str(source), "-o", str(out), "--force"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(["score", str(wine_bundle), str(source), "-o", str(out), "--force", "--keep", "customer"]) == 0
    assert "customer" in pq.read_table(out).schema.names


def test_keep_and_id_options_are_checked_against_the_input(wine_bundle, tmp_path):
    source = write_parquet(reference_table(wine_bundle), tmp_path / "rows.parquet")
    with pytest.raises(UsageError, match="--keep 'nope'"):
        score(wine_bundle, source, tmp_path / "a", keep=["nope"])
    with pytest.raises(UsageError, match="two columns named 'scores'"):
        rows = reference_table(wine_bundle).num_rows
        table = reference_table(wine_bundle, extra={"scores": pa.array(range(rows))})
        score(wine_bundle, write_parquet(table, tmp_path / "b.parquet"), tmp_path / "b", keep=["scores"])
    with pytest.raises(UsageError, match="engine 'dask'"):
        score(wine_bundle, source, tmp_path / "c", engine="dask")
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


def test_local_scoring_imports_neither_ray_nor_pyspark_nor_torch(wine_bundle, tmp_path):
    source = write_parquet(reference_table(wine_bundle), tmp_path / "rows.parquet")
    script = (
        "import sys\n"
        'for name in ("ray", "pyspark", "torch", "onnxscript"): sys.modules[name] = None\n'
        "from paritybundle.cli import main\n"
        f'code = main(["score", {str(wine_bundle)!r}, {str(source)!r}, "-o", {str(tmp_path / "s")!r}])\n'
        "import paritybundle.ray, paritybundle.spark\n"  # the API modules import neither until called
        "sys.exit(code)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "s" / "part-00000.parquet").is_file()


def test_an_engine_that_is_not_installed_is_one_sentence(wine_bundle, tmp_path):
    source = write_parquet(reference_table(wine_bundle), tmp_path / "rows.parquet")
    script = (
        'import sys\nsys.modules["ray"] = None\nfrom paritybundle.cli import main\n'
        f'sys.exit(main(["score", {str(wine_bundle)!r}, {str(source)!r}, "-o", {str(tmp_path / "s")!r}, '
        '"--engine", "ray"]))\n'
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "pip install 'paritybundle[ray]'" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "s").exists()


def test_what_pandas_writes_is_taken_as_it_is(wine_bundle, tmp_path):
    """A category column (dictionary-encoded in Parquet), whole numbers where the model takes floats."""
    frame = reference_table(wine_bundle).to_pandas()
    frame["color_band"] = frame["color_band"].astype("category")
    frame["magnesium"] = frame["magnesium"].fillna(0).round().astype("int64")
    frame.to_parquet(tmp_path / "rows.parquet")
    assert (
        pq.read_schema(tmp_path / "rows.parquet").field("color_band").type.id
        == pa.dictionary(pa.int32(), pa.string()).id
    )
    report = score(wine_bundle, tmp_path / "rows.parquet", tmp_path / "scores.parquet")
    assert report.rows_scored == len(frame)


def test_engine_options_go_with_their_engine(wine_bundle, tmp_path, capsys):
    source = write_parquet(reference_table(wine_bundle), tmp_path / "rows.parquet")
    assert main(["score", str(wine_bundle), str(source), "-o", str(tmp_path / "s"), "--ray-address", "auto"]) == 2
    assert "--ray-address goes with --engine ray" in capsys.readouterr().err
    assert main(["score", str(wine_bundle), str(source), "-o", str(tmp_path / "s"), "--batch-rows", "0"]) == 2
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "module, engine, option, address, message",
    [
        ("ray", "ray", "--ray-address", "127.0.0.1:1", "cannot reach Ray at 127.0.0.1:1"),
        ("pyspark", "spark", "--spark-master", "spark://127.0.0.1:1", "Spark master"),
    ],
)
def test_an_unreachable_cluster_is_exit_2_within_seconds(
    wine_bundle, tmp_path, capsys, module, engine, option, address, message
):
    require(module)
    source = write_parquet(reference_table(wine_bundle), tmp_path / "rows.parquet")
    assert (
        main(["score", str(wine_bundle), str(source), "-o", str(tmp_path / "s"), "--engine", engine, option, address])
        == 2
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
