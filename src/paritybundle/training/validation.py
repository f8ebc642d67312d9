"""Fail-closed validation at export: every staged graph is run in ONNX Runtime, in the training
environment, through the same comparison loop as ``bundle check``; a disagreement with research
means no bundle is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..bundle.manifest import Preprocessing, TensorSpec, Tolerance, TolerancePolicy
from ..check import engine
from ..check.checks import compare_in_memory
from ..check.engine import Comparison, Judge, Part, Run
from ..check.sources import InMemoryReferences
from ..check.targets import RunnerTarget
from ..errors import ExportError, ExportParityError, SpecError
from ..parity.explain import explain_failure
from ..parity.judge import judge_for
from ..parity.localise import column_accumulators, describe_columns, failing_columns, spanning_columns
from ..parity.results import OutputComparison
from ..runtime.runner import Runner
from ..runtime.session import SessionSettings, create_session


def validate_stage(
    path: Path,
    input_specs: list[TensorSpec],
    output_specs: list[TensorSpec],
    inputs: Sequence[Mapping[str, np.ndarray]],
    research: Sequence[Mapping[str, np.ndarray]],
    policy: TolerancePolicy,
    settings: SessionSettings,
    label: str,
    research_label: str,
) -> list[OutputComparison]:
    """Run one staged graph in ONNX Runtime on ``inputs`` and fail closed if it misses ``research``.

    Raises:
        SpecError: the reference inputs do not fit the graph.
        ExportParityError: ONNX Runtime disagrees with research beyond ``policy``.
    """
    runner = Runner(create_session(path, settings, label=label, at_export=True), input_specs, output_specs)
    comparisons = compare_in_memory(
        runner,
        policy,
        inputs,
        research,
        refuse=lambda exc: SpecError(f"the reference inputs do not fit {label}: {exc}"),
    )
    failures = [explain_failure(c) for c in comparisons if not c.passed]
    if failures:
        raise ExportParityError(
            f"ONNX Runtime running {label} disagrees with {research_label} on the reference inputs in the training "
            "environment, so no bundle was written: "
            + " ".join(failures)
            + " Look for operators the exporter translates differently, or set a looser tolerance "
            "if this difference is legitimate."
        )
    return comparisons


def validate_preprocessing(
    path: Path,
    raw_specs: list[TensorSpec],
    feature_specs: list[TensorSpec],
    raw: Mapping[str, np.ndarray],
    features: Mapping[str, np.ndarray],
    described: Preprocessing,
    tolerance: Tolerance,
    settings: SessionSettings,
) -> None:
    """The frozen ``preprocess.onnx`` against its research path, per raw input (column), fail closed.

    Raises:
        SpecError: the raw reference inputs do not fit the graph.
        ExportError: the graph lacks a feature output.
        ExportParityError: naming the column that disagrees.
    """
    label = path.name
    runner = Runner(create_session(path, settings, label=label, at_export=True), raw_specs, feature_specs)
    source = InMemoryReferences({"inputs": raw, "features": features})
    columns = column_accumulators(described, tolerance, source.rows)
    # Feature arrays no single column spans whole are also compared whole (slices may not cover them).
    spanned = spanning_columns(columns)
    policy = TolerancePolicy(
        reference_device="cpu",
        reference_precision="fp32",
        default=tolerance,
        min_decision_agreement=1.0,
        baseline_factor=10.0,
    )
    whole = {
        f.name: judge_for(f, policy, source.total_elements("features", f.name))
        for f in feature_specs
        if f.name not in spanned
    }
    target = RunnerTarget(
        runner,
        None,
        refuse=lambda exc: SpecError(f"the raw reference inputs do not fit the frozen preprocessing: {exc}"),
    )
    judges: list[tuple[str, Judge]] = [*((c.feature, c) for c in columns), *whole.items()]
    comparison = Comparison(Run(target, Part("inputs")), Part("features"), judges)
    try:
        engine.run(source, [comparison], rows_per_pass=max(source.rows, 1))
    except KeyError as exc:
        raise ExportError(
            f"the frozen preprocessing has no output {exc}; its outputs must be the model's inputs."
        ) from None
    failing = failing_columns([column.finish() for column in columns])
    failed_whole = [explain_failure(c) for c in (j.finish() for j in whole.values()) if not c.passed]
    if failing or failed_whole:
        raise ExportParityError(
            f"the frozen preprocessing ({label}) disagrees with its research path on the reference inputs, "
            "so no bundle was written: " + (describe_columns(failing) if failing else " ".join(failed_whole)) + ". "
            "The graph and the numpy/torch steps must compute the same thing; report this if the steps are paritybundle's."
        )
