"""``bundle export``: torch model -> validated ONNX -> one bundle, written atomically.

The pipeline: normalise the reference inputs, put the model in eval mode and make
sure it is deterministic, compute the research outputs with torch, export with
torch's ONNX exporter (dynamic batch), run the exported graph in ONNX Runtime on
the same inputs and FAIL CLOSED if it disagrees, then write the bundle.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import environment
from ..checker import compare_with_policy
from ..errors import ExportError, ExportParityError, InputValidationError, SpecError, UsageError
from ..manifest import (
    FORMAT_VERSION, GitInfo, Manifest, OutputError, Producer, Provenance, ReferenceSet,
    RuntimeSettings, Stages, TensorSpec, Tolerance, validate_name,
)
from ..parity import explain_failure
from ..references import ArrayStream, save_arrays
from ..runtime import Runner, SessionSettings, create_session, numpy_dtype_of_onnx, onnxruntime_version
from ..store import BundleWriter
from ..tolerance import default_policy
from .spec import ExportSpec

log = logging.getLogger("paritybundle.export")

MODEL_FILE = "model.onnx"
PIPELINE_FILE = "pipeline.onnx"
PREPROCESS_FILE = "preprocess.onnx"
INPUTS_FILE = "reference/inputs.npz"
FEATURES_FILE = "reference/features.npz"
OUTPUTS_FILE = "reference/outputs.npz"
LOCK_FILE = "environment.lock.json"
REQUIREMENTS_FILE = "requirements-serve.txt"
# Reference outputs are computed this many samples at a time to bound memory.
_TORCH_BATCH = 256
EXPORTERS = ("dynamo", "torchscript")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    manifest: Manifest
    was_training: bool


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError(
            "exporting needs torch, which is not installed here; install the training extra: "
            "pip install 'paritybundle[train]'."
        ) from None
    return torch


def export(model: Any, out: str | Path, *, reference_inputs: Any, name: str, version: str = "1",
           force: bool = False, **options: Any) -> ExportResult:
    """Export a trained torch model and its reference set as a bundle at ``out``.

    Args:
        model: the trained ``torch.nn.Module``.
        out: the bundle directory to write (atomically).
        reference_inputs: raw inputs (array/tensor, or mapping name -> array).
        name: the bundle's name.
        version: the bundle's version.
        force: replace an existing bundle at ``out``.
        **options: any other :class:`ExportSpec` field.

    Returns:
        An :class:`ExportResult`.

    Raises:
        SpecError: bad reference inputs or options.
        ExportError: torch's exporter could not convert the model (its reason included).
        ExportParityError: ONNX Runtime disagrees with torch beyond tolerance; nothing written.
        BundleExistsError: ``out`` exists and ``force`` is false.

    Example:
        >>> paritybundle.export(model, "artifacts/digits", reference_inputs=X_ref,
        ...                     name="digits", version="1")  # doctest: +SKIP
    """
    try:
        spec = ExportSpec(model=model, reference_inputs=reference_inputs, name=name, version=version, **options)
    except TypeError as exc:
        raise SpecError(f"unknown export option: {exc}.") from None
    return export_spec(spec, out, force=force)


def export_spec(spec: ExportSpec, out: str | Path, *, force: bool = False) -> ExportResult:
    """Export from an :class:`ExportSpec`; see :func:`export`.

    ``spec.model`` is a ``torch.nn.Module`` (research outputs computed with torch), or
    a path to an ``.onnx`` file with ``spec.research_outputs`` supplied by the caller
    (a model trained elsewhere, e.g. scikit-learn converted with skl2onnx).
    """
    if _is_onnx_model(spec.model):
        return _export_existing_onnx(spec, out, force=force)
    torch = _import_torch()
    _validate_spec(spec, torch)
    inputs = _reference_inputs(spec)
    staged = _preprocessing(spec, inputs)
    if staged is not None:
        inputs = staged.raw
    # What the model itself reads: the features when there is preprocessing, else the raw inputs.
    model_inputs = staged.features if staged is not None else inputs
    model = spec.model
    device = _model_device(model, torch)
    with _eval_mode(model) as was_training:
        if was_training:
            message = (f"model {type(model).__name__} was in training mode; it is exported in eval mode "
                       "(dropout off, batch-norm running statistics), as serving will run it.")
            # logging's last-resort handler prints warnings even where nothing configured logging.
            log.warning(message)
        research_first = _run_torch(model, model_inputs, torch, device)
        output_names = _output_names(spec, len(research_first))
        research = dict(zip(output_names, research_first))
        _check_deterministic(model, model_inputs, research, torch, device)
        reference_device = spec.reference_device or device.type
        reference_precision = spec.reference_precision or _precision(model, torch, device)
        with BundleWriter(out, force=force) as writer:
            model_path = writer.path(MODEL_FILE)
            _export_onnx(spec, model, model_inputs, output_names, model_path, torch, device, preprocessing=staged is not None)
            manifest = _write_bundle(writer, spec, inputs, research, reference_device, reference_precision,
                                     exporter=f"torch.onnx ({spec.exporter})", torch_info=_torch_info(torch, device),
                                     research_label="torch", staged=staged)
            path = writer.commit(manifest)
    log.info("exported %s v%s to %s", spec.name, spec.version, path)
    return ExportResult(path=path, manifest=manifest, was_training=was_training)


def _is_onnx_model(model: Any) -> bool:
    return isinstance(model, (str, Path)) and str(model).endswith(".onnx")


def _export_existing_onnx(spec: ExportSpec, out: str | Path, *, force: bool) -> ExportResult:
    """Bundle an ONNX model made elsewhere, with the research outputs its framework computed."""
    source = Path(spec.model)
    if not source.is_file():
        raise SpecError(f"ONNX model {source} does not exist.")
    _validate_common(spec)
    if spec.research_outputs is None:
        raise SpecError("an ONNX model needs research_outputs: the outputs the research framework computed "
                        "on reference_inputs (name -> array), which the bundle will be held to.")
    inputs = _reference_inputs(spec, cap=False)
    research = {str(k): _to_numpy(v, str(k)) for k, v in spec.research_outputs.items()}
    if spec.preprocess is not None:
        raise SpecError("preprocess is for torch models; an existing ONNX model takes the raw inputs its graph reads "
                        "(convert preprocessing and model together, e.g. one scikit-learn Pipeline).")
    counts = {name: a.shape[0] for name, a in research.items()}
    if set(counts.values()) != {_length(inputs)}:
        raise SpecError(f"research_outputs must have one row per reference sample ({_length(inputs)}), got {counts}.")
    if spec.output_names is not None and list(spec.output_names) != list(research):
        raise SpecError(f"output_names {list(spec.output_names)} differ from the research_outputs keys {list(research)}.")
    cap = spec.max_reference_samples
    if cap is not None and _length(inputs) > cap:
        inputs = {k: v[:cap] for k, v in inputs.items()}
        research = {k: v[:cap] for k, v in research.items()}
    with BundleWriter(out, force=force) as writer:
        shutil.copyfile(source, writer.path(MODEL_FILE))
        manifest = _write_bundle(writer, spec, inputs, research, spec.reference_device or "cpu",
                                 spec.reference_precision or "fp32", exporter=f"existing ONNX ({source.name})",
                                 torch_info=None, research_label="the research outputs")
        path = writer.commit(manifest)
    log.info("exported %s v%s to %s", spec.name, spec.version, path)
    return ExportResult(path=path, manifest=manifest, was_training=False)


def _write_bundle(writer: BundleWriter, spec: ExportSpec, inputs: dict[str, np.ndarray],
                  research: dict[str, np.ndarray], reference_device: str, reference_precision: str, *,
                  exporter: str, torch_info: environment.TorchInfo | None, research_label: str,
                  staged: StagedPreprocessing | None = None) -> Manifest:
    """Validate the staged model.onnx against the research outputs in ONNX Runtime (fail closed),
    then stage everything else and return the manifest to commit.

    With preprocessing, ``preprocess.onnx`` is frozen and validated against the research
    path's features, merged with the model into ``pipeline.onnx``, and each of the
    model and the pipeline is validated against the research outputs.
    """
    output_names = list(research)
    for unknown in set(spec.per_output_tolerance) - set(output_names):
        raise SpecError(f"per_output_tolerance names {unknown!r}, but the outputs are {', '.join(output_names)}.")
    policy = default_policy(reference_device, reference_precision, per_output=dict(spec.per_output_tolerance))
    if spec.tolerance is not None:
        policy = policy.model_copy(update={"default": spec.tolerance})
    model_path = writer.path(MODEL_FILE)
    settings = SessionSettings()
    preprocessing = None
    if staged is None:
        shutil.copyfile(model_path, writer.path(PIPELINE_FILE))
        input_specs, output_specs, opset = _graph_specs(model_path, inputs, output_names, spec, research)
    else:
        feature_specs, output_specs, opset = _graph_specs(model_path, staged.features, output_names, spec, research)
        input_specs, preprocessing = _freeze_preprocessing(writer, staged, opset, feature_specs, policy.default, settings)
        # The model alone, on the research features: a failure here is the model's, not the preprocessing's.
        _validate_stage(writer.path(MODEL_FILE), feature_specs, output_specs, staged.features, research, policy,
                        settings, f"the model ({MODEL_FILE}) on the research features", research_label)

    comparisons = _validate_stage(writer.path(PIPELINE_FILE), input_specs, output_specs, inputs, research, policy,
                                  settings, "the exported model" if staged is None else f"the merged {PIPELINE_FILE}",
                                  research_label)

    save_arrays(writer.path(INPUTS_FILE), inputs)
    if staged is not None:
        save_arrays(writer.path(FEATURES_FILE), staged.features)
    save_arrays(writer.path(OUTPUTS_FILE), research)
    # Read back what was written: a reference set that cannot round-trip must not ship.
    ArrayStream(writer.path(INPUTS_FILE), list(inputs), label=INPUTS_FILE).read_all()
    lock = environment.capture(torch_info)
    writer.write_bytes(LOCK_FILE, lock.to_json().encode())
    writer.write_bytes(REQUIREMENTS_FILE, environment.serve_requirements_text(lock).encode())
    return Manifest(
        format_version=FORMAT_VERSION,
        name=spec.name,
        version=spec.version,
        created_at=datetime.now(timezone.utc),
        producer=Producer(version=_version("paritybundle"), libraries=_library_versions()),
        provenance=Provenance(
            git=_git_info(spec.source_path),
            params=dict(spec.params), metrics={k: float(v) for k, v in spec.metrics.items()},
            data_hashes=dict(spec.data_hashes),
        ),
        inputs=input_specs,
        outputs=output_specs,
        stages=Stages(pipeline=PIPELINE_FILE, model=MODEL_FILE, preprocess=PREPROCESS_FILE if staged else None,
                      opset=opset, exporter=exporter),
        tolerance=policy,
        runtime=RuntimeSettings(
            onnxruntime_version=onnxruntime_version(), providers=list(settings.providers),
            graph_optimization_level=settings.graph_optimization_level,  # type: ignore[arg-type]
            intra_op_num_threads=settings.intra_op_num_threads,
        ),
        reference=ReferenceSet(inputs=INPUTS_FILE, outputs=OUTPUTS_FILE, features=FEATURES_FILE if staged else None,
                               samples=_length(inputs), device=reference_device, precision=reference_precision),
        export_errors={
            c.name: OutputError(max_abs=c.stats.max_abs, mean_abs=c.stats.mean_abs, max_rel=c.stats.max_rel)
            for c in comparisons if c.stats is not None
        },
        preprocessing=preprocessing,
        environment_lock=LOCK_FILE,
        serve_requirements=REQUIREMENTS_FILE,
        files=writer.digests(),
    )


def _validate_stage(path: Path, input_specs: list[TensorSpec], output_specs: list[TensorSpec],
                    inputs: Mapping[str, np.ndarray], research: Mapping[str, np.ndarray], policy: Any,
                    settings: SessionSettings, label: str, research_label: str) -> list[Any]:
    """Run one staged graph in ONNX Runtime on ``inputs`` and fail closed if it misses ``research``."""
    runner = Runner(create_session(path, settings, label=label), input_specs, output_specs)
    try:
        served = runner.run(runner.validate(inputs, check_finite=False))
    except InputValidationError as exc:
        raise SpecError(f"the reference inputs do not fit {label}: {exc}") from None
    comparisons = compare_with_policy(output_specs, policy, served, research)
    failures = [explain_failure(c) for c in comparisons if not c.passed]
    if failures:
        raise ExportParityError(
            f"ONNX Runtime running {label} disagrees with {research_label} on the reference inputs in the training "
            "environment, so no bundle was written: " + " ".join(failures) +
            " Look for operators the exporter translates differently, or set a looser tolerance "
            "if this difference is legitimate."
        )
    return comparisons


@dataclass
class StagedPreprocessing:
    """Preprocessing ready to freeze: the raw reference inputs and the research features."""

    preprocessor: Any
    raw: dict[str, np.ndarray]
    features: dict[str, np.ndarray]


def _preprocessing(spec: ExportSpec, inputs: dict[str, np.ndarray]) -> StagedPreprocessing | None:
    """Wrap ``spec.preprocess``, and run its research path on the raw reference inputs."""
    if spec.preprocess is None:
        return None
    from .preprocess.adapt import as_preprocessor

    preprocessor = as_preprocessor(spec.preprocess, list(inputs), spec)
    raw = preprocessor.prepare_raw(inputs)
    try:
        features = preprocessor.research(raw)
    except (SpecError, UsageError):
        raise
    except Exception as exc:
        raise SpecError(f"the preprocessing raised on the reference inputs ({type(exc).__name__}: "
                        f"{_first_paragraph(exc)}); check them against what it was fitted on.") from None
    features = {name: np.ascontiguousarray(_to_numpy(value, name)) for name, value in features.items()}
    clash = set(features) & set(raw)
    if clash:
        raise SpecError(f"the preprocessing output {sorted(clash)[0]!r} has the name of a raw input; rename one of them.")
    if any(len(f) != _length(raw) for f in features.values()):
        raise SpecError("the preprocessing returned a different number of rows than it was given.")
    return StagedPreprocessing(preprocessor, raw, features)


def _freeze_preprocessing(writer: BundleWriter, staged: StagedPreprocessing, opset: int, feature_specs: list[TensorSpec],
                          tolerance: Tolerance, settings: SessionSettings) -> tuple[list[TensorSpec], Any]:
    """Write preprocess.onnx, prove it reproduces the research features (per raw input), merge pipeline.onnx.

    Returns the raw input specs (read from the frozen graph) and the manifest's preprocessing section.
    """
    import onnx

    from ..manifest import TolerancePolicy
    from ..stages import column_accumulators, describe_columns, failing_columns, spanning_columns
    from .compose import merge_files

    graph = staged.preprocessor.to_onnx(staged.raw, opset)
    onnx.save(graph, str(writer.path(PREPROCESS_FILE)))
    pre_inputs = _input_specs(graph, PREPROCESS_FILE, staged.raw, staged.preprocessor.replaces_nan)
    runner = Runner(create_session(writer.path(PREPROCESS_FILE), settings, label=PREPROCESS_FILE), pre_inputs, feature_specs)
    try:
        served = runner.run(runner.validate(staged.raw, check_finite=False))
    except InputValidationError as exc:
        raise SpecError(f"the raw reference inputs do not fit the frozen preprocessing: {exc}") from None
    except KeyError as exc:
        raise ExportError(f"the frozen preprocessing has no output {exc}; its outputs must be the model's inputs.") from None
    described = staged.preprocessor.describe(feature_specs)
    columns = column_accumulators(described, tolerance, _length(staged.raw))
    for column in columns:
        column.add(served[column.feature], staged.features[column.feature], 0)
    failing = failing_columns([column.finish() for column in columns])
    # Feature arrays no single column spans whole are also compared whole (slices may not cover them).
    spanned = spanning_columns(columns)
    policy = TolerancePolicy(reference_device="cpu", reference_precision="fp32", default=tolerance,
                             min_decision_agreement=1.0, baseline_factor=10.0)
    whole = [explain_failure(c) for c in compare_with_policy([f for f in feature_specs if f.name not in spanned],
                                                             policy, served, staged.features) if not c.passed]
    if failing or whole:
        raise ExportParityError(
            f"the frozen preprocessing ({PREPROCESS_FILE}) disagrees with its research path on the reference inputs, "
            "so no bundle was written: " + (describe_columns(failing) if failing else " ".join(whole)) + ". "
            "The graph and the numpy/torch steps must compute the same thing; report this if the steps are paritybundle's."
        )
    merge_files(writer.path(PREPROCESS_FILE), writer.path(MODEL_FILE), writer.path(PIPELINE_FILE))
    return pre_inputs, described


def _input_specs(model: Any, label: str, arrays: Mapping[str, np.ndarray],
                 replaces_nan: Any = None) -> list[TensorSpec]:
    """The graph inputs of ``model`` (a loaded ModelProto, called ``label``) as specs, in the graph's
    order, named like ``arrays``.

    An input whose arrays hold NaN/inf, or whose preprocessing replaces NaN, accepts them when serving.
    """
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if sorted(i.name for i in graph_inputs) != sorted(arrays):
        raise ExportError(f"the graph {label} reads {[i.name for i in graph_inputs]}, not {list(arrays)}.")
    specs = []
    for value in graph_inputs:
        spec = _tensor_spec(value)
        array = arrays[spec.name]
        nonfinite = array.dtype.kind == "f" and not np.isfinite(array).all()
        handled = bool(replaces_nan and replaces_nan(spec.name))
        specs.append(spec.model_copy(update={"allow_nonfinite": bool(nonfinite or handled)}))
    return specs


def _tensor_spec(value: Any, kind: str = "values") -> TensorSpec:
    tensor_type = value.type.tensor_type
    shape: list[int | str] = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
        else:
            shape.append(dim.dim_param or f"dim_{axis}")
    return TensorSpec(name=value.name, dtype=numpy_dtype_of_onnx(tensor_type.elem_type), shape=shape, kind=kind)


def _validate_spec(spec: ExportSpec, torch: Any) -> None:
    if not isinstance(spec.model, torch.nn.Module):
        raise SpecError(f"the export spec's model is a {type(spec.model).__name__}, not a torch.nn.Module "
                        "(or a path to an .onnx file with research_outputs).")
    _validate_common(spec)


def _validate_common(spec: ExportSpec) -> None:
    try:
        validate_name(spec.name)
    except ValueError as exc:
        raise SpecError(f"bundle name {spec.name!r} {exc}.") from None
    if not isinstance(spec.version, str) or not spec.version or len(spec.version) > 128:
        raise SpecError("bundle version must be a non-empty string of at most 128 characters.")
    if spec.exporter not in EXPORTERS:
        raise SpecError(f"exporter {spec.exporter!r} is not one of {', '.join(EXPORTERS)}.")
    if spec.max_reference_samples is not None and spec.max_reference_samples < 1:
        raise SpecError("max_reference_samples must be at least 1 (or None for all).")
    for name, tol in spec.per_output_tolerance.items():
        if not isinstance(tol, Tolerance):
            raise SpecError(f"per_output_tolerance[{name!r}] must be a paritybundle.Tolerance.")
    if spec.tolerance is not None and not isinstance(spec.tolerance, Tolerance):
        raise SpecError("tolerance must be a paritybundle.Tolerance.")


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception:
        raise SpecError(f"reference input {name!r} cannot be converted to an array.") from None
    if array.dtype.kind == "O":
        if array.size and all(isinstance(v, str) for v in array.ravel()):
            array = array.astype(str)  # category strings (e.g. from pandas) as a unicode array
        else:
            raise SpecError(f"reference input {name!r} holds Python objects (not all strings); pass a numeric array, "
                            "a tensor, or strings.")
    if array.dtype.kind == "S":
        array = array.astype(str)
    if array.ndim == 0:
        raise SpecError(f"reference input {name!r} is a scalar; it needs a leading batch dimension.")
    return array


def _reference_inputs(spec: ExportSpec, cap: bool = True) -> dict[str, np.ndarray]:
    raw = spec.reference_inputs
    if raw is None:
        raise SpecError("reference_inputs is required: the raw inputs the research outputs are computed on.")
    if hasattr(raw, "columns") and hasattr(raw, "to_dict"):  # a pandas DataFrame: one input per column
        raw = {str(c): raw[c].to_numpy() for c in raw.columns}
    if isinstance(raw, Mapping):
        if spec.input_names is not None and list(spec.input_names) != list(raw):
            raise SpecError(f"input_names {list(spec.input_names)} differ from the reference input keys {list(raw)}.")
        arrays = {str(k): _to_numpy(v, str(k)) for k, v in raw.items()}
    else:
        names = list(spec.input_names or ["input"])
        if len(names) != 1:
            raise SpecError(f"{len(names)} input names given but one reference array; pass a mapping name -> array.")
        arrays = {names[0]: _to_numpy(raw, names[0])}
    if not arrays:
        raise SpecError("reference_inputs is empty; pass at least one input with at least one sample.")
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise SpecError(f"reference inputs disagree on the number of samples: {lengths}.")
    count = next(iter(lengths.values()))
    if count < 1:
        raise SpecError("reference_inputs has no samples; pass at least one.")
    limit = spec.max_reference_samples
    if cap and limit is not None and count > limit:
        log.info("keeping the first %d of %d reference samples", limit, count)
        arrays = {name: a[:limit] for name, a in arrays.items()}
    return {name: np.ascontiguousarray(a) for name, a in arrays.items()}


def _length(inputs: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0])


def _model_device(model: Any, torch: Any) -> Any:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _precision(model: Any, torch: Any, device: Any) -> str:
    dtypes = {p.dtype for p in model.parameters()}
    if torch.bfloat16 in dtypes:
        return "bf16"
    if torch.float16 in dtypes:
        return "fp16"
    if device.type != "cpu" and (torch.get_float32_matmul_precision() != "highest"
                                 or getattr(torch.backends.cuda.matmul, "allow_tf32", False)):
        return "tf32"
    return "fp32"


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[bool]:
    """Eval mode for the export; the caller's model gets its mode back afterwards."""
    was_training = bool(model.training)
    model.eval()
    try:
        yield was_training
    finally:
        model.train(was_training)


def _tensors(inputs: Mapping[str, np.ndarray], torch: Any, device: Any, start: int = 0, stop: int | None = None) -> list[Any]:
    tensors = []
    for name, array in inputs.items():
        try:
            tensors.append(torch.from_numpy(np.ascontiguousarray(array[start:stop])).to(device))
        except TypeError as exc:
            raise SpecError(f"reference input {name!r} of dtype {array.dtype} cannot become a tensor: {exc}.") from None
    return tensors


def _flatten_outputs(result: Any, torch: Any) -> list[Any]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and result and all(isinstance(r, torch.Tensor) for r in result):
        return list(result)
    raise SpecError(
        f"the model returned {type(result).__name__}; paritybundle exports models returning a tensor "
        "or a tuple/list of tensors."
    )


def _run_torch(model: Any, inputs: Mapping[str, np.ndarray], torch: Any, device: Any) -> list[np.ndarray]:
    total = _length(inputs)
    parts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, total, _TORCH_BATCH):
            try:
                result = model(*_tensors(inputs, torch, device, start, start + _TORCH_BATCH))
            except SpecError:
                raise
            except Exception as exc:
                raise SpecError(
                    f"the model raised on the reference inputs ({type(exc).__name__}: {_first_paragraph(exc)}); "
                    "check their shape and dtype match what forward() expects."
                ) from None
            outputs = [t.detach().float().cpu().numpy() if t.dtype in (torch.float16, torch.bfloat16)
                       else t.detach().cpu().numpy() for t in _flatten_outputs(result, torch)]
            if parts and len(outputs) != len(parts):
                raise SpecError("the model returned a different number of outputs for different batches.")
            if not parts:
                parts = [[] for _ in outputs]
            for bucket, value in zip(parts, outputs):
                bucket.append(value)
    return [np.concatenate(bucket, axis=0) for bucket in parts]


def _check_deterministic(model: Any, inputs: Mapping[str, np.ndarray], research: Mapping[str, np.ndarray],
                         torch: Any, device: Any) -> None:
    """Refuse a model whose eval-mode outputs change between two identical calls."""
    probe = {name: a[:_TORCH_BATCH] for name, a in inputs.items()}
    again = _run_torch(model, probe, torch, device)
    for (name, first), second in zip(research.items(), again):
        first = first[:_TORCH_BATCH]
        if first.shape != second.shape or not np.allclose(first, second, rtol=1e-5, atol=1e-6, equal_nan=True):
            raise ExportError(
                f"output {name!r} changes between two identical calls in eval mode, so no reference can "
                "hold; remove randomness from forward() (e.g. F.dropout(training=True), torch.rand) before exporting."
            )


def _output_names(spec: ExportSpec, count: int) -> list[str]:
    if spec.output_names is not None:
        names = list(spec.output_names)
        if len(names) != count:
            raise SpecError(f"{len(names)} output names given but the model returns {count} outputs.")
        if len(set(names)) != len(names):
            raise SpecError(f"output names must be distinct: {names}.")
        return names
    return ["output"] if count == 1 else [f"output_{k}" for k in range(count)]


def _first_paragraph(exc: BaseException, limit: int = 800) -> str:
    text = str(exc).strip()
    paragraph = text.split("\n\n", 1)[0]
    paragraph = " ".join(paragraph.split())
    return paragraph if len(paragraph) <= limit else paragraph[:limit] + " ..."


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's exporter logs progress and optional-dependency warnings; keep only errors."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_onnx(spec: ExportSpec, model: Any, inputs: Mapping[str, np.ndarray], output_names: list[str],
                 path: Path, torch: Any, device: Any, *, preprocessing: bool = False) -> None:
    from .preprocess.graph import MIN_OPSET

    opset = spec.opset
    if preprocessing and opset is not None and opset < MIN_OPSET:
        raise SpecError(f"opset {opset} is too old for the preprocessing graph; use opset {MIN_OPSET} or newer.")
    # The batch dimension must be at least 2 in the example, or the exporter fixes it to 1.
    example = {name: a[:4] if a.shape[0] >= 2 else np.concatenate([a, a], axis=0) for name, a in inputs.items()}
    args = tuple(_tensors(example, torch, device))
    names = list(inputs)
    try:
        with _quiet_exporter():
            if spec.exporter == "dynamo":
                batch = torch.export.Dim("batch")
                program = torch.onnx.export(
                    model, args, None, dynamo=True, input_names=names, output_names=output_names,
                    dynamic_shapes=tuple({0: batch} for _ in args), opset_version=opset, verbose=False,
                )
                program.save(str(path), external_data=_use_external_data(spec, model))
            else:
                torch.onnx.export(
                    model, args, str(path), dynamo=False, input_names=names, output_names=output_names,
                    dynamic_axes={n: {0: "batch"} for n in names + output_names},
                    opset_version=opset or (MIN_OPSET if preprocessing else 17),
                )
    except Exception as exc:
        raise ExportError(
            f"torch's ONNX exporter ({spec.exporter}) could not convert {type(model).__name__}: "
            f"{type(exc).__name__}: {_first_paragraph(exc)}"
        ) from None
    # Weights the exporter kept in side files must be exactly the files model.onnx refers to.
    from ..external_data import check_external_data

    staged = {p.name for p in path.parent.iterdir() if p.is_file()}
    check_external_data(path.name, path.parent, staged)


# Models with at least this many bytes of parameters keep their weights in a side file
# (model.onnx.data): protobuf cannot hold 2 GB, and a small model.onnx is cheap to parse.
EXTERNAL_DATA_ABOVE_BYTES = 512 * 1024 ** 2


def _use_external_data(spec: ExportSpec, model: Any) -> bool:
    if spec.external_data is not None:
        return spec.external_data
    size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return size >= EXTERNAL_DATA_ABOVE_BYTES


def _graph_specs(model_path: Path, spec_inputs: Mapping[str, np.ndarray], output_names: list[str], spec: ExportSpec,
                 research: Mapping[str, np.ndarray]) -> tuple[list[TensorSpec], list[TensorSpec], int]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if graph_inputs != list(spec_inputs):
        raise ExportError(f"the exported graph's inputs {graph_inputs} differ from {list(spec_inputs)}.")
    by_name = {o.name: o for o in model.graph.output}
    missing = [n for n in output_names if n not in by_name]
    if missing:
        raise ExportError(f"the exported graph has no output {missing[0]!r} (it has {list(by_name)}).")
    inputs = _input_specs(model, model_path.name, spec_inputs)
    outputs = [_tensor_spec(by_name[n]) for n in output_names]
    if spec.score_outputs is not None:
        unknown = set(spec.score_outputs) - set(output_names)
        if unknown:
            raise SpecError(f"score_outputs names {sorted(unknown)}, but the outputs are {', '.join(output_names)}.")
        scores = set(spec.score_outputs)
    else:
        scores = {o.name for o in outputs if _looks_like_scores(o, research[o.name])}
    outputs = [o.model_copy(update={"kind": "scores" if o.name in scores else "values"}) for o in outputs]
    return inputs, outputs, int(opset)


def _looks_like_scores(spec: TensorSpec, research: np.ndarray) -> bool:
    """[batch, classes>=2] floats: logits or probabilities, checked for argmax agreement too."""
    return (spec.dtype.startswith("float") and research.ndim == 2 and research.shape[1] >= 2)


def _torch_info(torch: Any, device: Any) -> environment.TorchInfo:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return environment.TorchInfo(version=torch.__version__, cuda=torch.version.cuda, cudnn=cudnn, device_name=name)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _library_versions() -> dict[str, str]:
    return {name: _version(name) for name in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "pydantic")}


def _git_info(source_path: str | None) -> GitInfo | None:
    """Commit and dirty flag of the git checkout holding the training code, if any."""
    where = Path(source_path).resolve().parent if source_path else Path.cwd()
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return GitInfo(commit=commit.stdout.strip(), dirty=bool(status.stdout.strip()))
