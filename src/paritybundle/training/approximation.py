"""A serving graph that differs from research by design (a quantized or fp16 graph), bundled honestly.

Research stays the reference: its outputs are what the bundle holds. Export first proves, as for any
bundle, that the research graph reproduces them (the element-wise tolerance); then it stages the
serving graph in its place and measures it on the reference rows against a *declared* budget: the
least share of decisions that must agree (``min_decision_agreement``: argmax per sample or position,
equal labels for integer outputs) and the distribution of each float output's absolute error
(``score_error``: p50, p99, max). Within the budget the bundle records it (``tolerance.approximation``)
and every later check judges the serving graph by it (parity/judge.py); beyond it, or with no budget
declared, nothing is written and the refusal gives what was measured.

Batch independence is proven on the research graph. The serving graph may legitimately move a row
with its batch-mates (dynamic quantization scales activations over the whole tensor, so over the batch):
export holds it to the budget three ways, and the bundle records the worst: the reference set batched
(as ``bundle check`` runs it), every reference row as a request of its own (as a server answers), and
the check's own single-row sample (``check/rows_alone.py``, whose few rows have quantiles of their
own), so a bundle that exports passes its own check.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.layout import MODEL_FILE, PIPELINE_FILE, PREPROCESS_FILE
from ..bundle.manifest import Approximation, ErrorBudget, MeasuredError, TensorSpec, TolerancePolicy
from ..bundle.writer import BundleWriter
from ..check.checks import compare_in_memory
from ..check.rows_alone import sampled_rows
from ..errors import ExportParityError, SpecError
from ..parity.explain import explain_failure
from ..parity.results import OutputComparison
from ..runtime.runner import Runner
from ..runtime.session import SessionSettings, create_session
from .inputs import first_paragraph
from .onnx_files import copy_onnx_with_data

# Operators that compute in 8-bit integers (ONNX's and ONNX Runtime's contrib domain).
INT8_OPERATORS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "QGemm",
        "QAttention",
        "QLinearAdd",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearSoftmax",
        "QEmbedLayerNormalization",
        "MatMulNBits",
    }
)
# A budget that bounds nothing: the measurement run when none was declared, so the refusal can say what was seen.
_UNBOUNDED = ErrorBudget(p50=sys.float_info.max, p99=sys.float_info.max, max=sys.float_info.max)

ADVICE = (
    "Quantization moved these outputs: keep the layers whose error dominates in float "
    "(quantize_dynamic's nodes_to_exclude), quantize weights per channel, or calibrate static "
    "quantization on representative data; if this accuracy is acceptable for the product, declare a "
    "wider budget (score_error, min_decision_agreement)."
)


def serving_precision(path: Path) -> str:
    """``int8`` when the graph computes in 8-bit integers, else ``fp16``/``bf16`` when its weights are
    half precision, else ``fp32``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    operators = {node.op_type for node in model.graph.node}
    if operators & INT8_OPERATORS:
        return "int8"
    types = {init.data_type for init in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in types:
        return "fp16"
    if onnx.TensorProto.BFLOAT16 in types:
        return "bf16"
    return "fp32"


def validate_approximation_options(spec: Any) -> None:
    """The spec's ``min_decision_agreement`` is a share, and ``score_error`` comes with a ``serving_model``.

    Raises:
        SpecError: saying which, and what to give.
    """
    agreement = spec.min_decision_agreement
    if agreement is not None and (
        isinstance(agreement, bool) or not isinstance(agreement, (int, float)) or not 0 <= agreement <= 1
    ):
        raise SpecError(f"min_decision_agreement is {agreement!r}; give a share between 0 and 1, e.g. 0.99.")
    if spec.serving_model is None and spec.score_error is not None:
        raise SpecError(
            "score_error budgets a serving_model that differs from research by design; give "
            "serving_model too, or drop score_error (without one, the element-wise tolerance judges)."
        )


def declared_budgets(score_error: Any, float_outputs: list[str]) -> dict[str, ErrorBudget] | None:
    """Each float output's budget from the spec's ``score_error`` (one budget for all, or per output);
    None when none was declared.

    Raises:
        SpecError: not an ErrorBudget, a budget for an unknown output, or a float output without one.
    """
    if score_error is None:
        return None
    if isinstance(score_error, ErrorBudget):
        return {name: score_error for name in float_outputs}
    if not isinstance(score_error, Mapping) or not all(isinstance(b, ErrorBudget) for b in score_error.values()):
        raise SpecError(
            "score_error must be a paritybundle.ErrorBudget(p50=..., p99=..., max=...), or a mapping of "
            "output name -> ErrorBudget."
        )
    unknown = sorted(set(score_error) - set(float_outputs))
    if unknown:
        raise SpecError(f"score_error names {unknown[0]!r}, but the float outputs are {', '.join(float_outputs)}.")
    missing = [name for name in float_outputs if name not in score_error]
    if missing:
        raise SpecError(
            f"score_error declares no budget for output {missing[0]!r}; give every float output one "
            "(or one ErrorBudget for all)."
        )
    return {str(name): budget for name, budget in score_error.items()}


def adopt_serving_graph(
    writer: BundleWriter,
    spec: Any,
    preprocessed: bool,
    input_specs: list[TensorSpec],
    model_specs: list[TensorSpec],
    output_specs: list[TensorSpec],
    groups: list[dict[str, np.ndarray]],
    research: list[dict[str, np.ndarray]],
    policy: TolerancePolicy,
    settings: SessionSettings,
) -> tuple[Approximation, list[OutputComparison]]:
    """Stage ``spec.serving_model`` as ``model.onnx`` (and ``pipeline.onnx``), and hold it to the declared budget.

    ``model.onnx`` holds the research graph when called (export proved it); ``spec.serving_model`` is the
    path of an ``.onnx``, an ``onnx.ModelProto``, or a callable given the research graph's path that returns
    either (e.g. ``onnxruntime.quantization.quantize_dynamic`` on it).

    Returns:
        The manifest's approximation record and the serving pipeline's comparisons with research.

    Raises:
        SpecError: the serving graph is missing, unreadable, or reads/answers differently from research's.
        ExportParityError: it misses the budget, or no budget was declared (the measured values said).
    """
    model_path, pipeline_path = writer.path(MODEL_FILE), writer.path(PIPELINE_FILE)
    with tempfile.TemporaryDirectory(prefix="paritybundle-serving-") as scratch:
        source = _serving_source(spec.serving_model, model_path, Path(scratch))
        _same_signature(source, model_specs, output_specs)
        for stale in (model_path, model_path.with_name(model_path.name + ".data")):
            stale.unlink(missing_ok=True)
        copy_onnx_with_data(source, model_path, spec.external_data)
    if preprocessed:
        from .compose import merge_files

        merge_files(writer.path(PREPROCESS_FILE), model_path, pipeline_path)
    else:
        shutil.copyfile(model_path, pipeline_path)
    precision = serving_precision(model_path)
    float_outputs = [s.name for s in output_specs if s.dtype.startswith(("float", "bfloat"))]
    budgets = declared_budgets(spec.score_error, float_outputs)
    agreement = policy.min_decision_agreement if spec.min_decision_agreement is None else spec.min_decision_agreement
    approximation = Approximation(
        serving_graph=_describe(spec.serving_model),
        serving_precision=precision,  # type: ignore[arg-type]
        min_decision_agreement=float(agreement),
        score_error=budgets if budgets is not None else {name: _UNBOUNDED for name in float_outputs},
    )
    judged = policy.model_copy(update={"approximation": approximation})
    label = f"the serving graph ({precision})"
    runner = Runner(create_session(pipeline_path, settings, label=label, at_export=True), input_specs, output_specs)
    refuse = lambda exc: SpecError(f"the reference inputs do not fit the serving graph: {exc}")  # noqa: E731
    rows = _one_row_each(groups, research)
    picks = sampled_rows(len(rows))
    ways = {
        "batched": compare_in_memory(runner, judged, groups, research, refuse=refuse),
        "one request each": compare_in_memory(
            runner, judged, [i for i, _ in rows], [r for _, r in rows], refuse=refuse
        ),
        "one request each, the check's sample": [
            _renumbered(c, picks)
            for c in compare_in_memory(
                runner, judged, [rows[k][0] for k in picks], [rows[k][1] for k in picks], refuse=refuse
            )
        ],
    }
    measured = {
        name: _worst(_measured(c) for c in per_way)
        for name, per_way in zip([c.name for c in ways["batched"]], zip(*ways.values(), strict=True), strict=True)
    }
    if budgets is None:
        raise ExportParityError(
            f"the serving graph ({precision}) differs from research by design, so declare by how much: "
            "score_error=ErrorBudget(p50=..., p99=..., max=...) and min_decision_agreement=... in the export spec "
            f"(measured on the reference rows: {_summary(measured)}); no bundle was written."
        )
    failures = [
        f"run {way}: {explain_failure(c)}" for way, comparisons in ways.items() for c in comparisons if not c.passed
    ]
    if failures:
        raise ExportParityError(
            f"the serving graph ({precision}) misses the declared approximation budget on the reference inputs, so "
            "no bundle was written: " + " ".join(failures) + " " + ADVICE
        )
    return approximation.model_copy(update={"measured": measured}), ways["batched"]


def _renumbered(c: OutputComparison, picks: np.ndarray) -> OutputComparison:
    """A comparison of the picked rows with its samples numbered as reference rows (pick k is row picks[k])."""

    def row(k: int) -> int:
        return int(picks[k])

    update: dict[str, Any] = {"failing_samples": [row(k) for k in c.failing_samples]}
    if c.stats is not None and c.stats.worst_index:
        index = [row(c.stats.worst_index[0]), *c.stats.worst_index[1:]]
        update["stats"] = c.stats.model_copy(update={"worst_index": index, "worst_sample": index[0]})
    if c.decision is not None:
        update["decision"] = c.decision.model_copy(
            update={"disagreeing_samples": [row(k) for k in c.decision.disagreeing_samples]}
        )
    return c.model_copy(update=update)


def _one_row_each(
    groups: list[dict[str, np.ndarray]],
    research: list[dict[str, np.ndarray]],
) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Every reference row as a request of its own, numbered across groups as a check streams them."""
    return [
        ({n: a[k : k + 1] for n, a in inputs.items()}, {n: a[k : k + 1] for n, a in outputs.items()})
        for inputs, outputs in zip(groups, research, strict=True)
        for k in range(len(next(iter(outputs.values()))))
    ]


def _worst(measured: Any) -> MeasuredError:
    """Per quantile the largest error, and the least agreement, of the ways one output was measured."""
    every = list(measured)

    def largest(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    agreements = [m.agreement for m in every if m.agreement is not None]
    return MeasuredError(
        p50=largest([m.p50 for m in every]),
        p99=largest([m.p99 for m in every]),
        max=largest([m.max for m in every]),
        agreement=min(agreements) if agreements else None,
    )


def _serving_source(serving: Any, research_graph: Path, scratch: Path) -> Path:
    """The serving graph as a file: a path as given, a ModelProto saved, a callable's answer either way."""
    if callable(serving) and not isinstance(serving, (str, Path)):
        copy = scratch / "research.onnx"
        copy_onnx_with_data(research_graph, copy, external_data=None)
        try:
            serving = serving(copy)
        except Exception as exc:
            raise SpecError(
                f"serving_model raised on the research graph ({type(exc).__name__}: "
                f"{first_paragraph(exc)}); fix the function that makes the serving graph."
            ) from None
        if serving is None:
            raise SpecError("serving_model returned None; return the serving graph's path or an onnx.ModelProto.")
    if isinstance(serving, (str, Path)):
        path = Path(serving)
        if path.suffix != ".onnx" or not path.is_file():
            raise SpecError(f"serving_model {str(path)!r} is not an .onnx file; give the path of the serving graph.")
        return path
    import onnx

    if isinstance(serving, onnx.ModelProto):
        path = scratch / "serving.onnx"
        onnx.save(serving, str(path), save_as_external_data=serving.ByteSize() > 2**31 - 2**20)
        return path
    raise SpecError(
        f"serving_model is a {type(serving).__name__}; give the path of an .onnx, an onnx.ModelProto, "
        "or a function of the research graph's path returning one."
    )


def _same_signature(source: Path, model_specs: list[TensorSpec], output_specs: list[TensorSpec]) -> None:
    """The serving graph reads the research graph's inputs and answers its outputs, in the same dtypes."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:
        raise SpecError(f"serving_model {source.name} is not a readable ONNX model ({first_paragraph(exc)}).") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    outputs = {o.name: o for o in model.graph.output}
    expected = [s.name for s in model_specs]
    if sorted(inputs) != sorted(expected):
        raise SpecError(
            f"the serving graph reads inputs {sorted(inputs)}, the research graph {sorted(expected)}; "
            "make the serving graph from the same model (e.g. quantize the research graph export wrote)."
        )
    for wanted, graph in ((model_specs, inputs), (output_specs, outputs)):
        for tensor_spec in wanted:
            value = graph.get(tensor_spec.name)
            if value is None:
                raise SpecError(
                    f"the serving graph has no output {tensor_spec.name!r} (it has {sorted(outputs)}); "
                    "it must answer every output research does."
                )
            elem = value.type.tensor_type.elem_type
            dtype = str(helper.tensor_dtype_to_np_dtype(elem)) if elem else "undefined"
            if dtype != tensor_spec.dtype:
                raise SpecError(
                    f"{tensor_spec.name!r} is {dtype} in the serving graph but {tensor_spec.dtype} in the "
                    "research graph; keep the graph's inputs and outputs in research's dtypes (cast inside)."
                )


def _measured(c: OutputComparison) -> MeasuredError:
    agreement = c.decision.agreement if c.decision is not None else None
    if c.budget is None or c.stats is None:  # a label output: only its agreement means something
        return MeasuredError(agreement=agreement)
    return MeasuredError(
        p50=_finite(c.budget.p50_abs), p99=_finite(c.stats.p99_abs), max=_finite(c.stats.max_abs), agreement=agreement
    )


def _finite(value: float) -> float:
    return value if np.isfinite(value) else sys.float_info.max


def _summary(measured: Mapping[str, MeasuredError]) -> str:
    parts = []
    for name, m in measured.items():
        errors = f"error p50 {m.p50:.3g}, p99 {m.p99:.3g}, max {m.max:.3g}" if m.max is not None else "labels"
        agrees = f", decisions agree {m.agreement:.2%}" if m.agreement is not None else ""
        parts.append(f"{name!r}: {errors}{agrees}")
    return "; ".join(parts)


def _describe(serving: Any) -> str:
    if isinstance(serving, (str, Path)):
        return Path(serving).name[:256]
    return getattr(serving, "__name__", type(serving).__name__)[:256] or "serving graph"
