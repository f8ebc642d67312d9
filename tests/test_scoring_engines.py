"""`bundle score` on a real local Ray and a real local Spark (local[2]): every worker gated, failures named.

No engine is mocked: Ray runs `read_parquet -> map_batches(actors) -> write_parquet`, Spark runs
`mapInArrow` in its Python workers. A drifted worker is made by what its engine lets a job set for
its workers (Ray's runtime_env, Spark's executor environment): a numpy major version in its path.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import require, skip_or_fail

require("pyarrow")

from scoring_tools import (  # noqa: E402
    expected_outputs,
    fake_numpy_path,
    reference_table,
    scored_outputs,
    write_parquet,
)

from bundle_tools import copy_bundle, perturb_weights, rehash  # noqa: E402
from paritybundle.bundle.store import open_bundle  # noqa: E402
from paritybundle.commands.score import score  # noqa: E402
from paritybundle.errors import BundleInvalid, EnvironmentRefused, ParityFailure, UsageError  # noqa: E402


def assert_research(bundle: Path, outputs: dict[str, np.ndarray], repeat: int = 1) -> None:
    for name, research in expected_outputs(bundle, repeat).items():
        np.testing.assert_allclose(outputs[name], research, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- Ray


def test_ray_job_scores_research_outputs_and_reports_every_worker(ray_cluster, wine_bundle, tmp_path):
    source = write_parquet(reference_table(wine_bundle, repeat=4), tmp_path / "rows", files=4)
    out = tmp_path / "scores"
    report = score(wine_bundle, source, out, engine="ray", workers=2, batch_rows=40, keep=["customer"])
    table, outputs = scored_outputs(out, wine_bundle)
    assert report.passed and report.rows_scored == table.num_rows
    # Row ids are unique (worker ordinal, then its own count); the kept key joins scores to rows.
    assert len(set(table.column("row_id").to_pylist())) == table.num_rows
    order = np.argsort(table.column("customer").to_numpy(zero_copy_only=False))
    assert_research(wine_bundle, {n: a[order] for n, a in outputs.items()}, repeat=4)
    assert len(report.workers) == 2 and {w.verdict for w in report.workers} == {"passed"}
    assert sum(w.rows_scored for w in report.workers) == table.num_rows
    assert all(w.engine == "ray" and w.node and w.reference_samples > 0 for w in report.workers)
    assert json.loads((out / "_paritybundle_score.json").read_text())["workers"][0]["worker"].startswith("ray-")


def test_ray_worker_with_a_drifted_environment_stops_the_job_exit_4(ray_cluster, wine_bundle, tmp_path):
    source = write_parquet(reference_table(wine_bundle), tmp_path / "rows.parquet")
    drifted = {"runtime_env": {"env_vars": {"PYTHONPATH": str(fake_numpy_path(tmp_path))}}}
    with pytest.raises(
        EnvironmentRefused, match=r"worker ray-\w+ on node \w+ .*refused to score: .*numpy 2?[\d.]* -> 99\.0\.0"
    ) as caught:
        score(wine_bundle, source, tmp_path / "scores", engine="ray", workers=1, engine_options=drifted)
    [worker] = caught.value.report.workers
    assert worker.verdict == "failed" and worker.exit_code == 4 and worker.rows_scored == 0
    assert not (tmp_path / "scores").exists() and not list(tmp_path.glob(".scores.partial-*"))


def test_ray_worker_refuses_a_bundle_altered_on_its_way_exit_3(ray_cluster, digits_bundle, tmp_path):
    """The driver's copy verified, but what reached the worker was altered: the worker's own verification
    refuses it (the shipment carries the digest of the manifest the driver verified)."""
    from paritybundle.commands.score import job_error
    from paritybundle.scoring.columns import plan_columns
    from paritybundle.scoring.gate import ship
    from paritybundle.scoring.ray_engine import run_job

    verified = open_bundle(digits_bundle)
    shipment = ship(verified)
    altered = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(shipment.archive), mode="r:gz") as original,
        tarfile.open(fileobj=altered, mode="w:gz", format=tarfile.PAX_FORMAT) as copy,
    ):
        for member in original.getmembers():
            data = original.extractfile(member).read()
            if member.name == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 0x01])
            copy.addfile(member, io.BytesIO(data))
    shipment = dataclasses.replace(shipment, archive=altered.getvalue())
    source = write_parquet(reference_table(digits_bundle), tmp_path / "rows.parquet")
    plan = plan_columns(verified.manifest, __import__("pyarrow.parquet").parquet.read_schema(source))
    (tmp_path / "out").mkdir()
    rows, records, failure = run_job(
        shipment,
        plan,
        [str(source)],
        "parquet",
        str(tmp_path / "out"),
        address=None,
        workers=1,
        batch_rows=1000,
        settings=None,
        env_policy="strict",
        public_key=None,
    )
    assert rows == 0 and records[0].verdict == "failed" and records[0].exit_code == 3
    error = job_error("ray", records, failure)
    assert isinstance(error, BundleInvalid) and "model.onnx" in str(error) and "refused to score" in str(error)


def test_ray_bad_row_and_parity_failure_keep_their_exit_codes(ray_cluster, digits_bundle, wine_bundle, tmp_path):
    import pyarrow as pa

    table = reference_table(wine_bundle)
    bands = table.column("color_band").to_pylist()
    bands[7] = None
    broken = table.set_column(table.schema.get_field_index("color_band"), "color_band", pa.array(bands))
    source = write_parquet(broken, tmp_path / "broken.parquet")
    with pytest.raises(UsageError, match=r"column 'color_band' has a missing value at row"):
        score(wine_bundle, source, tmp_path / "a", engine="ray", workers=1)
    assert not (tmp_path / "a").exists()

    bundle = copy_bundle(digits_bundle, tmp_path / "perturbed")
    perturb_weights(bundle, 0.05)
    rehash(bundle)
    with pytest.raises(ParityFailure, match=r"worker ray-\w+ on node .*refused to score: .*logits"):
        score(
            bundle,
            write_parquet(reference_table(digits_bundle), tmp_path / "d.parquet"),
            tmp_path / "b",
            engine="ray",
            workers=1,
        )
    assert not (tmp_path / "b").exists()


def test_ray_python_api_gives_a_gated_dataset(ray_cluster, digits_bundle, tmp_path):
    import paritybundle.ray

    source = write_parquet(reference_table(digits_bundle, repeat=2), tmp_path / "rows.parquet")
    dataset = ray_cluster.data.read_parquet(str(source))
    scored = paritybundle.ray.score(dataset, digits_bundle, keep=["customer"], workers=2, batch_rows=100)
    table = scored.to_arrow_refs()
    import pyarrow as pa

    table = pa.concat_tables(ray_cluster.get(table)).sort_by("customer")
    from paritybundle.scoring.columns import output_arrays

    assert_research(digits_bundle, output_arrays(table, open_bundle(digits_bundle).manifest), repeat=2)
    with pytest.raises(UsageError, match="has no column 'pixels'"):
        paritybundle.ray.score(dataset.drop_columns(["pixels"]), digits_bundle)


# ---------------------------------------------------------------- Spark


def _java_or_skip() -> None:
    try:
        subprocess.run(["java", "-version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        skip_or_fail("Spark needs Java 17 (apt install openjdk-17-jre-headless; .ci/run installs it)")


@pytest.fixture(scope="module")
def spark_session():
    require("pyspark", "pyspark is in the dev extra")
    _java_or_skip()
    from paritybundle.scoring.spark_engine import session

    spark, _ = session("local[2]")
    yield spark
    spark.stop()


def test_spark_job_scores_research_outputs_and_reports_its_workers(spark_session, wine_bundle, tmp_path):
    source = write_parquet(reference_table(wine_bundle, repeat=3), tmp_path / "rows", files=3)
    out = tmp_path / "scores"
    report = score(wine_bundle, source, out, engine="spark", keep=["customer"])
    table, outputs = scored_outputs(out, wine_bundle)
    order = np.argsort(table.column("customer").to_numpy(zero_copy_only=False))
    assert_research(wine_bundle, {n: a[order] for n, a in outputs.items()}, repeat=3)
    assert report.passed and report.rows_scored == table.num_rows == sum(w.rows_scored for w in report.workers)
    assert report.workers and all(w.verdict == "passed" and w.worker.startswith("spark-") for w in report.workers)
    assert len(set(table.column("row_id").to_pylist())) == table.num_rows
    assert not (out / "spark-output").exists() and (out / "_paritybundle_score.json").is_file()


def test_spark_parity_failure_is_exit_1_naming_the_worker(spark_session, digits_bundle, tmp_path):
    bundle = copy_bundle(digits_bundle, tmp_path / "perturbed")
    perturb_weights(bundle, 0.05)
    rehash(bundle)
    source = write_parquet(reference_table(digits_bundle), tmp_path / "rows.parquet")
    with pytest.raises(ParityFailure, match=r"worker spark-[\w-]+ on node .*refused to score: .*logits"):
        score(bundle, source, tmp_path / "scores", engine="spark")
    assert not (tmp_path / "scores").exists() and not list(tmp_path.glob(".scores.partial-*"))


def test_spark_python_api_gives_a_gated_dataframe(spark_session, digits_bundle, tmp_path):
    import paritybundle.spark
    from paritybundle.scoring.columns import output_arrays

    source = write_parquet(reference_table(digits_bundle), tmp_path / "rows.parquet")
    frame = spark_session.read.parquet(str(source))
    scored = paritybundle.spark.score(frame, digits_bundle, id_column="customer")
    table = scored.toArrow().sort_by("customer")
    assert table.schema.names == ["customer", "logits"]
    assert_research(digits_bundle, output_arrays(table, open_bundle(digits_bundle).manifest))
    with pytest.raises(UsageError, match="has no column 'pixels'"):
        paritybundle.spark.score(frame.drop("pixels"), digits_bundle)


def test_spark_worker_with_a_drifted_environment_stops_the_job_exit_4(wine_bundle, tmp_path):
    """Its own process: a Spark application's executor environment is fixed when its context starts."""
    require("pyspark", "pyspark is in the dev extra")
    _java_or_skip()
    source = write_parquet(reference_table(wine_bundle), tmp_path / "rows.parquet")
    script = (
        "import sys\nfrom paritybundle.commands.score import score\nfrom paritybundle.errors import ParityBundleError\n"
        "try:\n"
        f"    score({str(wine_bundle)!r}, {str(source)!r}, {str(tmp_path / 'scores')!r}, engine='spark', "
        f"spark_master='local[2]', engine_options={{'spark.executorEnv.PYTHONPATH': {str(fake_numpy_path(tmp_path))!r}}})\n"
        "except ParityBundleError as exc:\n"
        "    print(type(exc).__name__, exc.report.workers == [], exc)\n"
        "    sys.exit(exc.exit_code)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 4, run.stdout + run.stderr[-3000:]
    assert run.stdout.startswith("EnvironmentRefused") and "refused to score" in run.stdout and "99.0.0" in run.stdout
    assert not (tmp_path / "scores").exists()
