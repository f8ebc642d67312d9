"""Scoring on Spark: ``mapInArrow`` over the input DataFrame, a parity gate in every Python worker.

Spark hands each Python worker process Arrow record batches; the first batch a process sees opens
its gate (:func:`.gate.open_gate`, on that executor's node and environment) and the gate is kept for
the life of the process (Spark reuses Python workers), so the check runs once per process, not per
task. A process whose gate failed fails every task it is given, with the check's error; the driver
reads the error's class back from Spark's report of it (exit 1, 3 or 4, the worker named).
Gate records and rows per worker travel in a Spark accumulator (what finished tasks report).

``mapInArrow`` rather than ``mapInPandas``: both run the same Python workers, but the scorer works
on Arrow tables, and pandas would turn every list column (an image, a vector of scores) into a
Python object per row on the way in and out.

Row ids, when the input has no id column: Spark's ``monotonically_increasing_id`` (unique, not
consecutive). Nothing here is imported unless the Spark engine is asked for (the ``[spark]`` extra).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..runtime.load import Settings
from .columns import ColumnPlan
from .gate import Gate, Shipment, Where, WorkerRecord, cached_gate
from .reach import require_reachable
from .scorer import Scorer

INSTALL_HINT = "the Spark engine needs pyspark (and Java 17): pip install 'paritybundle[spark]'."
ROW_ID_COLUMN = "__paritybundle_row_id"


def spark_modules() -> Any:
    try:
        import pyspark.sql
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return pyspark.sql


def session(master: str | None, conf: dict[str, str] | None = None) -> tuple[Any, bool]:
    """The active SparkSession, or a new one on ``master`` (default ``local[*]``); True when made here."""
    sql = spark_modules()
    active = sql.SparkSession.getActiveSession()
    if active is not None:
        if master is not None:
            raise UsageError(
                f"a SparkSession is already active in this process; it is used as it is, so pass no "
                f"Spark master (got {master!r})."
            )
        return active, False
    if master is not None and master.startswith("spark://"):  # Spark retries an unanswered master for minutes
        require_reachable(master, "spark://", "the Spark master", "--spark-master")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter (local mode)
    builder = sql.SparkSession.builder.master(master or "local[*]").appName("paritybundle score")
    builder = builder.config("spark.ui.enabled", "false").config("spark.sql.execution.arrow.pyspark.enabled", "true")
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # no Java, a master that cannot be reached: Py4J's and Spark's own errors
        reason = " ".join(str(exc).split())[:300]
        raise UsageError(
            f"cannot start Spark on {master or 'local[*]'} ({reason}); check Java 17 and --spark-master."
        ) from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True


class _Records:
    """Accumulator of worker records and row counts (plain dicts: what every Spark version pickles)."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, a: list, b: list) -> list:  # noqa: N802 (Spark's name)
        a.extend(b)
        return a


def _gate(shipment: Shipment, settings: Settings, env_policy: str, public_key: str | None, report: Any) -> Gate:
    """This process's gate (opened on its first batch, then kept). Every task reports it: a process may
    serve several jobs, and the driver keeps one record per worker."""
    host = socket.gethostname()
    where = Where(engine="spark", worker=f"spark-{host}-{os.getpid()}", node=host)
    gate, _ = cached_gate(shipment, where, settings=settings, env_policy=env_policy, public_key=public_key)
    report.add([gate.record.model_dump(mode="json")])
    return gate


def score_partitions(
    batches: Iterator[Any],
    *,
    shipment: Any,
    plan: ColumnPlan,
    settings: Settings,
    env_policy: str,
    public_key: str | None,
    records: Any,
    batch_size: int | None = None,
) -> Iterator[Any]:
    """The function ``mapInArrow`` runs: gate once per process, then each record batch scored."""
    import pyarrow as pa

    shipped = shipment.value if hasattr(shipment, "value") else shipment
    gate = _gate(shipped, settings, env_policy, public_key, records)
    scorer = Scorer(gate, plan, batch_size)
    target = spark_schema_of(plan.schema)
    rows = 0
    for batch in batches:
        table = pa.Table.from_batches([batch])
        ids = table.column(ROW_ID_COLUMN).to_numpy() if plan.id_column is None else None
        scored = scorer(
            table, scorer.rows, ids, where=f"worker {gate.record.worker} (rows numbered in its own share)"
        ).cast(target)
        rows += batch.num_rows
        yield from scored.to_batches()
    records.add([{"worker": gate.record.worker, "rows": rows}])


def spark_schema_of(schema: Any) -> Any:
    """The scored Arrow schema with fixed-size lists as lists (Spark's arrays have no fixed size)."""
    import pyarrow as pa

    fields = []
    for field in schema:
        kind = field.type
        if pa.types.is_fixed_size_list(kind):
            kind = pa.list_(kind.value_type)
        fields.append(pa.field(field.name, kind, nullable=True, metadata=field.metadata))
    return pa.schema(fields)


def score_dataframe(
    frame: Any,
    shipment: Shipment,
    plan: ColumnPlan,
    *,
    settings: Settings = None,
    env_policy: str = "strict",
    public_key: str | None = None,
    records: Any = None,
) -> Any:
    """``frame`` scored by gated Python workers (lazy, as Spark is)."""
    from functools import partial

    from pyspark.sql import functions
    from pyspark.sql.pandas.types import from_arrow_schema

    spark = frame.sparkSession
    frame = frame.select(*plan.read_columns)
    if plan.id_column is None:
        frame = frame.withColumn(ROW_ID_COLUMN, functions.monotonically_increasing_id())
    if records is None:
        records = spark.sparkContext.accumulator([], _Records())
    shipped = spark.sparkContext.broadcast(shipment)
    function = partial(
        score_partitions,
        shipment=shipped,
        plan=plan,
        settings=settings,
        env_policy=env_policy,
        public_key=public_key,
        records=records,
    )
    return frame.mapInArrow(function, from_arrow_schema(spark_schema_of(plan.schema)))


def run_job(
    shipment: Shipment,
    plan: ColumnPlan,
    files: list[str],
    form: str,
    out: str,
    *,
    master: str | None,
    conf: dict[str, str] | None,
    batch_rows: int,
    settings: Settings,
    env_policy: str,
    public_key: str | None,
) -> tuple[int, list[WorkerRecord], BaseException | None]:
    """Read, score and write on Spark; (rows scored, worker records, the error that stopped it or None)."""
    settings_conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(batch_rows), **(conf or {})}
    spark, made = session(master, settings_conf)
    try:
        reader = spark.read
        frame = (
            reader.parquet(*files)
            if form == "parquet"
            else reader.option("header", True).option("inferSchema", True).csv(list(files))
        )
        records = spark.sparkContext.accumulator([], _Records())
        scored = score_dataframe(
            frame, shipment, plan, settings=settings, env_policy=env_policy, public_key=public_key, records=records
        )
        written = Path(out) / "spark-output"
        error: BaseException | None = None
        try:
            scored.write.parquet(str(written))
        except Exception as exc:  # Spark's report of what a Python worker raised
            error = exc
        else:
            for part in written.iterdir():  # the part files (and _SUCCESS) into OUTPUT's staging folder
                os.replace(part, Path(out) / part.name)
            shutil.rmtree(written)
        return _rows_and_records(records.value, error)
    finally:
        if made:
            spark.stop()


def _rows_and_records(
    entries: list[dict], error: BaseException | None
) -> tuple[int, list[WorkerRecord], BaseException | None]:
    records: dict[str, WorkerRecord] = {}
    for entry in entries:
        if "verdict" in entry:
            records.setdefault(entry["worker"], WorkerRecord.model_validate(entry))
    for entry in entries:
        if "rows" in entry and entry["worker"] in records:
            record = records[entry["worker"]]
            records[entry["worker"]] = record.model_copy(update={"rows_scored": record.rows_scored + entry["rows"]})
    found = list(records.values())
    return sum(r.rows_scored for r in found), found, error
