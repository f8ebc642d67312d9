"""Scoring a Spark DataFrame with a bundle, every Python worker parity-gated: ``paritybundle.spark.score``.

Example:
    >>> import paritybundle.spark
    >>> scored = paritybundle.spark.score(spark.read.parquet("rows/"), "artifacts/wine")  # doctest: +SKIP
    >>> scored.write.parquet("scores/")  # doctest: +SKIP

pyspark is the ``[spark]`` extra; this module imports it only when :func:`score` runs.
"""

from __future__ import annotations

import os
from typing import Any

from .runtime.drift import DEFAULT_POLICY
from .runtime.load import Settings
from .scoring.prepare import prepare


def score(
    dataframe: Any,
    bundle: str | os.PathLike[str],
    *,
    keep: list[str] | tuple[str, ...] = (),
    id_column: str | None = None,
    settings: Settings = None,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
) -> Any:
    """``dataframe`` (whose columns are the bundle's inputs) scored by gated Python workers: a lazy
    DataFrame of the row id, the ``keep`` columns and one column per output.

    The bundle is verified here first and broadcast to the workers; each Python worker process verifies
    it again, applies the drift policy to its own environment and passes the bundle's reference check
    on its own runtime before it scores a row. A worker that fails raises the check's error in the
    action that runs the DataFrame (``pyspark.errors.PythonException``, its text naming the worker).

    Raises:
        UsageError: the DataFrame's columns do not match the bundle's inputs (named), pyspark missing.
        BundleInvalid: the bundle fails verification here.
    """
    from .scoring.spark_engine import score_dataframe, spark_modules

    spark_modules()
    from pyspark.sql.pandas.types import to_arrow_schema

    shipment, plan = prepare(
        bundle,
        to_arrow_schema(dataframe.schema),
        keep=keep,
        id_column=id_column,
        env_policy=env_policy,
        public_key=public_key,
        source="the DataFrame",
    )
    return score_dataframe(
        dataframe,
        shipment,
        plan,
        settings=settings,
        env_policy=env_policy,
        public_key=None if public_key is None else str(public_key),
    )
