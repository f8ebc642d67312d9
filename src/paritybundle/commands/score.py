"""``bundle score``: one scoring job on the local, Ray or Spark engine, every worker parity-gated.

Order: OUTPUT may be written (or --force) -> the driver verifies the bundle -> the input's schema
is matched against the bundle's inputs (a missing or mistyped column stops here, nothing runs) ->
the engine scores into a staging location, each worker passing its gate first -> the scores are
moved into OUTPUT only when every worker finished. A failure leaves no OUTPUT and raises the
error whose exit code the job ends with; its ``report`` attribute holds the job's
:class:`~paritybundle.scoring.report.ScoreReport` (which worker failed, where, why).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..bundle.store import open_bundle
from ..errors import ParityBundleError, UsageError
from ..runtime.drift import DEFAULT_POLICY, check_policy
from ..runtime.load import Settings
from ..scoring.columns import plan_columns
from ..scoring.gate import Where, WorkerRecord, open_gate, ship
from ..scoring.inputs import open_input
from ..scoring.local import local_where, score_local
from ..scoring.output import StagedOutput, may_write, refuse_overlap
from ..scoring.report import ScoreReport
from ..scoring.worker_errors import job_error

ENGINES = ("local", "ray", "spark")
# A batch is held in memory whole (and Arrow counts a batch's rows in 32 bits in places); past these a
# value is a typo, not a plan.
MAX_BATCH_ROWS = 1 << 24
MAX_WORKERS = 4096


def score(
    bundle: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    engine: str = "local",
    keep: list[str] | tuple[str, ...] = (),
    id_column: str | None = None,
    force: bool = False,
    settings: Settings = None,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
    batch_rows: int = 65_536,
    workers: int = 2,
    ray_address: str | None = None,
    spark_master: str | None = None,
    progress: bool = False,
    engine_options: dict[str, Any] | None = None,
) -> ScoreReport:
    """Score a Parquet or CSV input with a bundle into Parquet at ``output``; the job's report.

    Args:
        engine: ``local`` (this process, streaming), ``ray`` (Ray Data against ``ray_address``, or a
            local Ray it starts) or ``spark`` (``mapInArrow`` on ``spark_master``, default ``local[*]``).
        keep: input columns copied beside the scores. ``id_column``: an input column to carry as the
            row id (default: ``row_id`` is made).
        workers: Ray actors (the Spark engine uses the master's executors).
        engine_options: ``ray_remote_args`` for the Ray actors, or Spark ``conf`` settings.

    Raises:
        UsageError (2): bad arguments, an unreadable input, a missing or mistyped column, OUTPUT exists.
        BundleInvalid (3), EnvironmentRefused (4), ParityFailure (1): a worker's gate refused (the error
            names it); ``error.report`` is the job's report. Nothing is written to OUTPUT.
    """
    started, started_at = time.perf_counter(), datetime.now(timezone.utc)
    if engine not in ENGINES:
        raise UsageError(f"engine {engine!r} is not one of {', '.join(ENGINES)}.")
    if not 1 <= batch_rows <= MAX_BATCH_ROWS or not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--batch-rows must be from 1 to {MAX_BATCH_ROWS} and --workers from 1 to {MAX_WORKERS}.")
    check_policy(env_policy)
    if ray_address is not None and engine != "ray":
        raise UsageError("--ray-address goes with --engine ray.")
    if spark_master is not None and engine != "spark":
        raise UsageError("--spark-master goes with --engine spark.")
    single_file = engine == "local" and Path(output).suffix.lower() == ".parquet"
    refuse_overlap(Path(output), input=input, bundle=bundle)
    may_write(Path(output), force=force, single_file=single_file)
    verified = open_bundle(bundle, public_key)  # the driver verifies before anything is launched
    data = open_input(input)
    plan = plan_columns(verified.manifest, data.schema, keep=tuple(keep), id_column=id_column, source=str(input))
    staged = StagedOutput(output, force=force, single_file=single_file)
    records: list[WorkerRecord] = []

    def report(rows: int, error: ParityBundleError | None) -> ScoreReport:
        return ScoreReport(
            passed=error is None,
            exit_code=0 if error is None else error.exit_code,
            error=None if error is None else str(error),
            engine=engine,  # type: ignore[arg-type]
            bundle=verified.manifest.name,
            bundle_version=verified.manifest.version,
            manifest_sha256=verified.manifest_sha256(),
            input=str(input),
            output=str(output),
            rows_scored=rows,
            columns=list(plan.schema.names),
            started_at=started_at,
            duration_s=round(time.perf_counter() - started, 3),
            workers=records,
        )

    try:
        if engine == "local":
            worker, node = local_where()
            try:
                gate = open_gate(
                    verified.root,
                    Where(engine="local", worker=worker, node=node),
                    settings=settings,
                    env_policy=env_policy,
                    public_key=public_key,
                )
            except ParityBundleError as exc:
                records.append(exc.record)  # type: ignore[attr-defined]
                raise
            records.append(gate.record)
            rows = score_local(
                gate, plan, data, staged.data, single_file=single_file, batch_rows=batch_rows, progress=progress
            )
            records[0] = gate.record.model_copy(update={"rows_scored": rows})
        else:
            shipment = ship(verified)
            files = [str(f) for f in data.files]
            if engine == "ray":
                from ..scoring.ray_engine import run_job
            else:
                from ..scoring.spark_engine import run_job  # type: ignore[assignment]
            extra = (
                {"address": ray_address, "workers": workers, "ray_remote_args": engine_options}
                if engine == "ray"
                else {"master": spark_master, "conf": engine_options}
            )
            rows, found, failure = run_job(
                shipment,
                plan,
                files,
                data.format,
                str(staged.data),
                batch_rows=batch_rows,
                settings=settings,
                env_policy=env_policy,
                public_key=None if public_key is None else str(public_key),
                **extra,
            )
            records.extend(found)
            if failure is not None or any(r.verdict == "failed" for r in records):
                raise job_error(engine, records, failure)
    except ParityBundleError as exc:
        staged.abandon()
        exc.report = report(sum(r.rows_scored for r in records), exc)  # type: ignore[attr-defined]
        raise
    except BaseException:
        staged.abandon()
        raise
    result = report(rows, None)
    staged.publish(result)
    return result
