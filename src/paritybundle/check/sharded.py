"""Checks of captured traffic too large for one machine: shards judged on workers, the judges merged exactly.

A capture is split by file. Each shard is judged through the one comparison loop, numbering its
samples in the whole capture and sized by the whole capture's element counts, so that the judges
of all shards merge into exactly what one pass over everything would have found
(:meth:`~paritybundle.parity.accumulator.OutputAccumulator.merge`: counts, sums, maxima, violations
and the worst sample exactly; p99 exactly too, each shard keeping the largest values the whole set's
p99 can need). The driver reads only what sizes the shards: each file's row count and the output
shape columns.

``check --references CAPTURE --engine ray`` judges this runtime against what production served
(:func:`judge_capture`, ``research=None``); ``replay --engine ray`` judges what production served
against research's outputs computed on the worker (``research`` given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle.manifest import Manifest, Tolerance
from ..parity.accumulator import OutputAccumulator
from ..parity.results import OutputComparison
from ..runtime.capture import CaptureData, capture_files, column, merged, pyarrow_modules
from ..runtime.runner import Runner
from . import engine
from .checks import output_judges
from .engine import Comparison, Part, Run
from .results import CheckSettings
from .sources import InMemoryReferences
from .targets import RunnerTarget


@dataclass(frozen=True)
class Shard:
    """One capture file, where its samples start in the whole capture, and the whole capture's element counts."""

    file: str
    first: int
    samples: int
    totals: Mapping[str, int]


@dataclass
class ShardResult:
    """A shard's judges (to merge), the requests of the samples they name, and who judged it."""

    judges: dict[str, OutputAccumulator]
    requests: dict[int, str]
    samples: int
    worker: Mapping[str, str] = field(default_factory=dict)
    # A check's shard: what the worker's ONNX Runtime ran under (None for a replay, which runs none).
    settings: CheckSettings | None = None


class _WholeSet:
    """What the judges are sized by: the whole capture's element counts, not the shard's."""

    def __init__(self, totals: Mapping[str, int]) -> None:
        self.totals = totals

    def total_elements(self, part: str, name: str) -> int:
        return self.totals[name]


def plan_shards(capture: str | Path, manifest: Manifest) -> list[Shard]:
    """One shard per capture file, from the files' footers and output shape columns only.

    Raises:
        UsageError: no capture there, or a file that cannot be read.
    """
    _, parquet = pyarrow_modules()
    from ..errors import UsageError

    files = capture_files(capture)
    counts: list[int] = []
    totals = {spec.name: 0 for spec in manifest.outputs}
    for file in files:
        try:
            shapes = parquet.read_table(file, columns=[column("output", s.name) + ".shape" for s in manifest.outputs])
        except Exception as exc:  # pyarrow's own errors: a truncated or foreign file
            raise UsageError(
                f"{file} is not a readable capture file of {manifest.name!r} ({type(exc).__name__}: {str(exc)[:200]})."
            ) from None
        counts.append(shapes.num_rows)
        for spec in manifest.outputs:
            rank = len(spec.shape) - 1
            if rank == 0:
                totals[spec.name] += shapes.num_rows
                continue
            flat = shapes.column(column("output", spec.name) + ".shape").combine_chunks().flatten()
            dims = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.int64).reshape(-1, rank)
            totals[spec.name] += int(np.prod(dims, axis=1).sum())
    starts: list[int] = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist() if counts else []
    return [
        Shard(file=str(f), first=int(s), samples=n, totals=dict(totals))
        for f, s, n in zip(files, starts, counts, strict=True)
    ]


def judge_capture(
    data: CaptureData,
    shard: Shard,
    manifest: Manifest,
    overrides: Mapping[str, Tolerance],
    *,
    runner: Runner | None = None,
    research: Sequence[Mapping[str, np.ndarray]] | None = None,
    batch_size: int | None = 1024,
    histograms: bool = False,
) -> ShardResult:
    """One shard's judges: ``runner`` on its inputs against what production served (a check), or what
    production served against ``research``'s outputs per group (a replay)."""
    whole = _WholeSet(shard.totals)
    judges = output_judges(manifest, whole, overrides, histograms)
    if research is None:
        if runner is None:
            raise ValueError("a shard is judged with a runner (a check) or research outputs (a replay)")
        source = InMemoryReferences(merged(data.groups), first=shard.first)
        compared = Comparison(
            Run(RunnerTarget(runner, batch_size), Part("inputs")), Part("outputs"), list(judges.items())
        )
        rows_per_pass = batch_size or max(source.rows, 1)
    else:
        source = InMemoryReferences(
            [{"served": g.outputs, "outputs": dict(r)} for g, r in zip(data.groups, research, strict=True)],
            first=shard.first,
        )
        compared = Comparison(Part("served"), Part("outputs"), list(judges.items()))
        rows_per_pass = max(source.rows, 1)
    samples = engine.run(source, [compared], rows_per_pass=rows_per_pass)
    order = data.order
    named = set().union(*(judge.listed_samples() for judge in judges.values())) if judges else set()
    requests = {
        index: data.request_of(int(order[index - shard.first]))
        for index in named
        if 0 <= index - shard.first < order.size
    }
    return ShardResult(judges=judges, requests=requests, samples=samples)


def merge_shards(results: Sequence[ShardResult]) -> tuple[list[OutputComparison], dict[int, str], int]:
    """The shards' judges merged in capture order: the comparisons, the requests they name, the samples."""
    ordered = list(results)
    if not ordered:
        return [], {}, 0
    merged_judges = ordered[0].judges
    requests = dict(ordered[0].requests)
    for result in ordered[1:]:
        for name, judge in result.judges.items():
            merged_judges[name].merge(judge)
        requests.update(result.requests)
    return [j.finish() for j in merged_judges.values()], requests, sum(r.samples for r in ordered)
