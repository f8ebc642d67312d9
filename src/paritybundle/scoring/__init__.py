"""Batch scoring past one machine, every worker parity-gated (``bundle score``, :mod:`paritybundle.ray`,
:mod:`paritybundle.spark`).

:mod:`.gate` (a worker proves parity before it scores) -> :mod:`.columns` (table columns <-> tensors)
-> :mod:`.scorer` (one batch) -> the engines: :mod:`.local`, :mod:`.ray_engine`, :mod:`.spark_engine`;
:mod:`paritybundle.commands.score` runs a job end to end into :mod:`.output`'s staging location.
Ray and pyspark are imported only by their engine modules, and only when that engine is asked for.
"""
