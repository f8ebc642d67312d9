"""Scoring on Ray Data: ``read_parquet -> map_batches(gated actor) -> write_parquet``.

Each actor of the pool opens its gate in its constructor (:func:`.gate.open_gate`: verify the shipped
bundle, apply the drift policy to the actor's own environment, run the reference check on its own
runtime) before Ray hands it a batch. Every actor reports to one :class:`Ledger` actor: its gate
record when it passes or fails, and the rows of each batch it scored (synchronously, so the ledger
is complete when the write returns). Ray reports an actor whose constructor raised only as "the
actor died"; the ledger is how the driver learns which worker failed, on which node, with which of
the check's exit codes.

Row ids, when the input has no id column: ``(worker ordinal << 40) + the worker's row count``,
unique within the job but not positions in the input (Ray Data numbers no rows; Spark's
``monotonically_increasing_id`` makes the same trade). Pass an id column to carry your own.

Nothing here is imported unless the Ray engine is asked for; ``ray`` is the ``[ray]`` extra.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import numpy as np

from ..errors import ParityBundleError, UsageError
from ..runtime.load import Settings
from .columns import ColumnPlan
from .gate import Shipment, Where, WorkerRecord, open_gate
from .reach import require_reachable
from .scorer import Scorer

INSTALL_HINT = "the Ray engine needs Ray Data: pip install 'paritybundle[ray]'."
ROW_ID_SHIFT = 40


def ray_module() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def connect(address: str | None, workers: int) -> bool:
    """Join the Ray cluster at ``address`` or, without one, start a local Ray with room for ``workers``
    actors and the read tasks beside them; True when this call started it (and should shut it down)."""
    ray = ray_module()
    if address:  # ray.init would retry an address nothing answers on for minutes
        require_reachable(
            address,
            "ray://",
            "Ray",
            "--ray-address (the head node's GCS address, e.g. 10.0.0.5:6379, or ray://host:10001)",
        )
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=max(os.cpu_count() or 1, workers + 1),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    except Exception as exc:  # noqa: BLE001 - Ray reports a node that failed to start as a bare Exception
        # ("The current node timed out during startup ... the GCS has become overloaded"): a fault of the
        # machine or the cluster, never of the job, so one sentence and exit 2, whatever its class.
        ray.shutdown()  # whatever part of a local Ray did start
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        if address:
            raise UsageError(f"cannot reach Ray at {address} ({reason}); check --ray-address.") from None
        raise UsageError(
            f"a local Ray could not be started ({reason}); free memory and CPU on this machine, or "
            "pass --ray-address of a running cluster."
        ) from None
    return True


class _Ledger:
    """Gate records and row counts of a job's workers (one actor, asked synchronously)."""

    def __init__(self) -> None:
        self.records: dict[str, WorkerRecord] = {}
        self.order: list[str] = []

    def opened(self, record: WorkerRecord) -> int:
        if record.worker not in self.records:
            self.order.append(record.worker)
        self.records[record.worker] = record
        return self.order.index(record.worker)

    def scored(self, worker: str, rows: int) -> None:
        record = self.records[worker]
        self.records[worker] = record.model_copy(update={"rows_scored": record.rows_scored + rows})

    def all(self) -> list[WorkerRecord]:
        return [self.records[w] for w in self.order]


def new_ledger() -> Any:
    ray = ray_module()
    return ray.remote(num_cpus=0)(_Ledger).remote()


class GatedScorer:
    """The actor ``map_batches`` runs: gate in the constructor, then one scored Arrow table per batch."""

    def __init__(
        self,
        shipment: Shipment,
        plan: ColumnPlan,
        ledger: Any,
        settings: Settings,
        env_policy: str,
        public_key: str | None,
        batch_size: int | None,
    ) -> None:
        import ray

        context = ray.get_runtime_context()
        self.ray, self.ledger = ray, ledger
        where = Where(
            engine="ray", worker=f"ray-{(context.get_actor_id() or '')[:12]}", node=context.get_node_id()[:12]
        )
        try:
            gate = open_gate(shipment, where, settings=settings, env_policy=env_policy, public_key=public_key)
        except ParityBundleError as exc:
            if ledger is not None:
                ray.get(ledger.opened.remote(exc.record))  # type: ignore[attr-defined]
            raise
        self.worker = where.worker
        self.ordinal = ray.get(ledger.opened.remote(gate.record)) if ledger is not None else 0
        self.scorer = Scorer(gate, plan, batch_size)

    def __call__(self, batch: Any) -> Any:
        first = self.scorer.rows
        ids = None
        if self.scorer.plan.id_column is None:
            ids = (np.int64(self.ordinal) << ROW_ID_SHIFT) + np.arange(first, first + batch.num_rows, dtype=np.int64)
        scored = self.scorer(batch, first, ids, where=f"worker {self.worker} (rows numbered in its own share)")
        if self.ledger is not None:
            self.ray.get(self.ledger.scored.remote(self.worker, batch.num_rows))
        return scored


def score_dataset(
    dataset: Any,
    shipment: Shipment,
    plan: ColumnPlan,
    *,
    workers: int = 2,
    batch_rows: int = 65_536,
    settings: Settings = None,
    env_policy: str = "strict",
    public_key: str | None = None,
    ledger: Any = None,
    ray_remote_args: dict[str, Any] | None = None,
) -> Any:
    """``dataset`` scored by a pool of ``workers`` gated actors (lazy, as Ray Data is).

    Each actor asks for one CPU where the cluster has a CPU to spare for the read tasks beside the pool,
    and for a share otherwise (``ray.init(num_cpus=2)`` with two actors: half a CPU each), since a pool
    that takes every CPU leaves the reads that feed it waiting forever. ``ray_remote_args`` overrides.
    """
    args = {"num_cpus": actor_cpus(workers), **(ray_remote_args or {})}
    pool = ray_module().data.ActorPoolStrategy(size=workers)
    return dataset.map_batches(
        GatedScorer,
        batch_format="pyarrow",
        batch_size=batch_rows,
        compute=pool,
        fn_constructor_kwargs=dict(
            shipment=shipment,
            plan=plan,
            ledger=ledger,
            settings=settings,
            env_policy=env_policy,
            public_key=public_key,
            batch_size=None,
        ),
        **args,
    )


def actor_cpus(workers: int) -> float:
    """CPUs per scoring actor: one, unless the cluster then has none left for reading."""
    cpus = float(ray_module().cluster_resources().get("CPU", 1.0))
    return 1.0 if cpus - workers >= 1 else max(cpus - 1, cpus / 2) / workers


def read_dataset(files: list[str], form: str, columns: list[str]) -> Any:
    ray = ray_module()
    if form == "csv":
        return ray.data.read_csv(files).select_columns(columns)
    return ray.data.read_parquet(files).select_columns(columns)


def run_job(
    shipment: Shipment,
    plan: ColumnPlan,
    files: list[str],
    form: str,
    out: str,
    *,
    address: str | None,
    workers: int,
    batch_rows: int,
    settings: Settings,
    env_policy: str,
    public_key: str | None,
    ray_remote_args: dict[str, Any] | None = None,
) -> tuple[int, list[WorkerRecord], BaseException | None]:
    """Read, score and write on Ray; (rows scored, worker records, the error that stopped it or None)."""
    ray = ray_module()
    started = connect(address, workers)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the job's own report says what ran where
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    try:
        ledger = new_ledger()
        dataset = read_dataset(files, form, plan.read_columns)
        scored = score_dataset(
            dataset,
            shipment,
            plan,
            workers=workers,
            batch_rows=batch_rows,
            settings=settings,
            env_policy=env_policy,
            public_key=public_key,
            ledger=ledger,
            ray_remote_args=ray_remote_args,
        )
        error: BaseException | None = None
        try:
            with warnings.catch_warnings():  # "the operator received fewer inputs than actors": a small input
                warnings.simplefilter("ignore", UserWarning)
                scored.write_parquet(out)
        except Exception as exc:  # Ray wraps what a worker raised; the ledger and the chain say what it was
            error = exc
        records = ray.get(ledger.all.remote())
        return sum(r.rows_scored for r in records), records, error
    finally:
        if started:
            ray.shutdown()
