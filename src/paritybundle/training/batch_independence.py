"""A verdict holds one row per request: export proves a row's outputs do not depend on its batch-mates.

Research computes its reference outputs in batches; a server answers each request on its own (or
batched with strangers). A model that computes statistics over the batch (``BatchNorm1d`` with
``track_running_stats=False``, a batch-wise normalisation written by hand, a layer left in training
mode) agrees with research at the batch research used and nowhere else: before this, such a model
exported, checked, served ready and passed ``check --url`` at the default batch of 1024, while one
row per request agreed with research on 65% of classes.

So before the exported graph is validated, ONNX Runtime runs the reference rows three ways: all
together (up to :data:`PROBE_ROWS` of each group), a sample of 16 of them one at a time, and all together in reverse order; each row's outputs must agree across the three under the
bundle's tolerance (they differ by float noise at most). A model whose rows do not is refused,
naming batch dependence (DESIGN.md, rule 2). ``bundle check`` repeats the single-row runs on a sample
of the reference set (:mod:`paritybundle.check.checks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..bundle.manifest import TolerancePolicy
from ..check.checks import compare_in_memory
from ..check.rows_alone import sampled_rows
from ..errors import ExportParityError, InputValidationError
from ..parity.results import OutputComparison
from ..runtime.runner import Runner

PROBE_ROWS = 512


def refuse_batch_dependence(
    runner: Runner, groups: Sequence[Mapping[str, np.ndarray]], policy: TolerancePolicy, label: str
) -> None:
    """Raise when a row's outputs from ``runner``'s graph (``label``) change with the rows batched beside it.

    Raises:
        ExportParityError: naming batch dependence, the outputs and how far they moved; nothing is written.
    """
    for group in groups:
        rows = min(len(next(iter(group.values()))), PROBE_ROWS)
        if rows < 2:
            continue
        try:
            head = runner.validate({name: array[:rows] for name, array in group.items()})
            together = runner.run(head, None)
        except InputValidationError:
            return  # the validation that follows names what does not fit
        picks = sampled_rows(rows)
        alone = compare_in_memory(
            runner, policy, [_rows(head, [k]) for k in picks], [_rows(together, [k]) for k in picks]
        )
        backwards = np.arange(rows)[::-1]
        reversed_order = compare_in_memory(runner, policy, _rows(head, backwards), _rows(together, backwards))
        failed = [(c, "run alone") for c in alone if not c.passed]
        failed += [(c, "in reverse order") for c in reversed_order if not c.passed]
        if failed:
            raise ExportParityError(
                f"batch dependence: {label} gives a row different outputs depending on which rows are batched with it, so no "
                f"bundle was written ({'; '.join(_how(c, way, len(picks), rows) for c, way in failed)}). Serving "
                "answers each request on its own, so research's outputs would hold only at research's batch. The "
                "model computes statistics over the batch: BatchNorm with track_running_stats=False, a "
                "normalisation over axis 0, or a layer left in training mode. Make each row's outputs depend on "
                "that row alone (running statistics, LayerNorm or InstanceNorm)."
            )


def _rows(arrays: Mapping[str, np.ndarray], rows: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    index = np.asarray(rows, dtype=np.int64)
    return {name: np.ascontiguousarray(array[index]) for name, array in arrays.items()}


def _how(comparison: OutputComparison, way: str, sampled: int, rows: int) -> str:
    stats = comparison.stats
    moved = f", by up to {stats.max_abs:.3g}" if stats is not None else ""
    if way == "run alone":
        return (
            f"output {comparison.name!r}: rows run alone ({sampled} sampled of {rows}) differ from the same rows "
            f"run together{moved}"
        )
    return f"output {comparison.name!r}: the {rows} rows run in reverse order differ from the same rows in order{moved}"
