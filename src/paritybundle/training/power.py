"""Detection power, measured at export: can this reference set, under this tolerance, see a change?

The exported pipeline's weights are perturbed in memory by a small share of each weight tensor's
spread (0.1%, then 1%: the noise ``bundle_tools.perturb_weights`` applies in the defect tests),
the reference set is run through the perturbed graph in ONNX Runtime, and judged like a check.
The smallest perturbation that fails is recorded in the manifest; when even 1% passes, export
says why (outputs inside their tolerance, too few samples, one class only) and warns, or with
``require_power`` refuses to write the bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..bundle.external_data import mentions_external_data
from ..bundle.manifest import Power, TensorSpec, TolerancePolicy
from ..check.checks import compare_in_memory
from ..errors import WeakReferencesError
from ..runtime.runner import Runner
from ..runtime.session import SessionSettings, create_session
from .compose import PREPROCESS_PREFIX

log = logging.getLogger("paritybundle.export")

LEVELS = (0.001, 0.01)
# An exact output (an int64 decision, atol = rtol = 0) that changed is infinitely past its tolerance; the
# manifest holds finite numbers only, so a ratio is recorded as at most this ("far past").
MAX_RECORDED_RATIO = 1e12
# Fewer reference samples than this cannot show much of a model, whatever the tolerance.
FEW_SAMPLES = 10


def measure_power(
    pipeline: Path,
    input_specs: list[TensorSpec],
    output_specs: list[TensorSpec],
    inputs: Sequence[Mapping[str, np.ndarray]],
    research: Sequence[Mapping[str, np.ndarray]],
    policy: TolerancePolicy,
    settings: SessionSettings,
    *,
    seed: int = 0,
) -> Power:
    """The smallest of :data:`LEVELS` of weight noise the reference set detects, and why not when none.

    Weights are the graph's float initializers with more than one value, preprocessing constants
    excepted (those are checked column by column). A graph with external data is not perturbed
    in memory (its weights are not loaded): the result then says so. ``inputs`` and ``research``
    hold one mapping per group of reference shapes.
    """
    if mentions_external_data(pipeline):
        return Power(
            levels=list(LEVELS),
            detected=None,
            measured=False,
            reasons=["not measured: the weights are in external data, which export does not load twice"],
        )
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(pipeline))
    weights = [
        (k, numpy_helper.to_array(init))
        for k, init in enumerate(model.graph.initializer)
        if not init.name.startswith(PREPROCESS_PREFIX)
    ]
    weights = [(k, array) for k, array in weights if array.dtype.kind == "f" and array.size > 1]
    if not weights:
        return Power(
            levels=list(LEVELS),
            detected=None,
            measured=False,
            reasons=["not measured: the graph has no weight tensors to perturb"],
        )
    rng = np.random.default_rng(seed)
    worst: dict[str, float] = {}
    for level in LEVELS:
        perturbed = onnx.ModelProto()
        perturbed.CopyFrom(model)
        for k, array in weights:
            noisy = array + rng.normal(0.0, level * (float(array.std()) or 1.0), array.shape)
            name = perturbed.graph.initializer[k].name
            perturbed.graph.initializer[k].CopyFrom(numpy_helper.from_array(noisy.astype(array.dtype), name))
        session = create_session(
            perturbed.SerializeToString(), settings, label=f"{pipeline.name} + {level:.1%} noise", at_export=True
        )
        comparisons = compare_in_memory(
            Runner(session, list(input_specs), list(output_specs)), policy, inputs, research
        )
        worst[f"{level:g}"] = min(
            max((c.stats.max_tolerance_ratio for c in comparisons if c.stats), default=0.0), MAX_RECORDED_RATIO
        )
        if not all(comparisons):
            return Power(levels=list(LEVELS), detected=level, measured=True, worst_ratios=worst)
    return Power(
        levels=list(LEVELS),
        detected=None,
        measured=True,
        worst_ratios=worst,
        reasons=_why_not(output_specs, research, policy),
    )


def _why_not(
    outputs: list[TensorSpec], groups: Sequence[Mapping[str, np.ndarray]], policy: TolerancePolicy
) -> list[str]:
    reasons = []
    rows = sum(len(next(iter(g.values()))) for g in groups)
    if rows < FEW_SAMPLES:
        reasons.append(f"only {rows} reference samples")
    for spec in outputs:
        scale = policy.scales.get(spec.name)
        tolerance = policy.for_output(spec.name)
        if scale is not None and tolerance.atol >= scale.spread:
            reasons.append(
                f"output {spec.name!r} varies by {scale.spread:.3g} across the reference set, within its "
                f"atol {tolerance.atol:.3g}: the tolerance is larger than the outputs"
            )
        predicted = {
            int(c)
            for g in groups
            for c in np.unique(np.asarray(g[spec.name]).argmax(axis=-1))
            if np.asarray(g[spec.name]).ndim >= 2
        }
        if spec.kind == "scores" and len(predicted) == 1:
            reasons.append(f"output {spec.name!r} predicts one class only across the reference set")
    if not reasons and policy.approximation is not None:
        reasons.append(
            f"1% weight noise moves the outputs less than the declared approximation budget "
            f"({policy.approximation.serving_precision} serving graph); a tighter budget, or a less lossy "
            "serving graph, detects more"
        )
    if not reasons:
        reasons.append(
            "1% weight noise moves the outputs less than their tolerance (measured noise, or the "
            "outputs' own spread, sets it): the model is insensitive to its weights at that scale"
        )
    return reasons


def report_power(power: Power, name: str, *, require: bool) -> None:
    """Log what the reference set detects; with ``require``, refuse when it detects neither level."""
    if power.detected is not None:
        log.info("%s: the reference set detects a %.1f%% weight perturbation", name, power.detected * 100)
        return
    why = "; ".join(power.reasons)
    if require:
        raise WeakReferencesError(
            f"the reference set of {name} does not detect even a 1% weight perturbation ({why}), and power was "
            "required; add reference rows that exercise the model (more samples, every class), or drop --require-power."
        )
    log.warning(
        "%s: the reference set does not detect a 1%% weight perturbation (%s); its check cannot tell "
        "this model from a slightly different one.",
        name,
        why,
    )
