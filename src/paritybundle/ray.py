"""Scoring a Ray Dataset with a bundle, every actor parity-gated: ``paritybundle.ray.score``.

Example:
    >>> import ray, paritybundle.ray
    >>> scored = paritybundle.ray.score(ray.data.read_parquet("s3://bucket/rows"), "artifacts/wine")  # doctest: +SKIP
    >>> scored.write_parquet("s3://bucket/scores")  # doctest: +SKIP

Ray is the ``[ray]`` extra; this module imports it only when :func:`score` runs.
"""

from __future__ import annotations

import os
from typing import Any

from .runtime.drift import DEFAULT_POLICY
from .runtime.load import Settings
from .scoring.prepare import prepare


def score(
    dataset: Any,
    bundle: str | os.PathLike[str],
    *,
    keep: list[str] | tuple[str, ...] = (),
    id_column: str | None = None,
    workers: int = 2,
    batch_rows: int = 65_536,
    settings: Settings = None,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
    ray_remote_args: dict[str, Any] | None = None,
) -> Any:
    """``dataset`` (a ``ray.data.Dataset`` whose columns are the bundle's inputs) scored by ``workers``
    gated actors: a lazy ``ray.data.Dataset`` of the row id, the ``keep`` columns and one column per output.

    The bundle is verified here first and shipped to the actors, each of which verifies it again, applies
    the drift policy to its own environment and passes the bundle's reference check on its own runtime
    before it scores a row. An actor that fails its gate fails the dataset's execution (Ray reports it as
    the actor having died; its log names the check's error). ``bundle score --engine ray`` runs the same
    actors and reports which worker failed, and why, with the check's exit code.

    Raises:
        UsageError: the dataset's columns do not match the bundle's inputs (named), Ray missing.
        BundleInvalid: the bundle fails verification here.
    """
    from .scoring.ray_engine import ray_module, score_dataset

    ray_module()
    shipment, plan = prepare(
        bundle,
        dataset.schema().base_schema,
        keep=keep,
        id_column=id_column,
        env_policy=env_policy,
        public_key=public_key,
        source="the dataset",
    )
    return score_dataset(
        dataset,
        shipment,
        plan,
        workers=workers,
        batch_rows=batch_rows,
        settings=settings,
        env_policy=env_policy,
        public_key=None if public_key is None else str(public_key),
        ray_remote_args=ray_remote_args,
    )
