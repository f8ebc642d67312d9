"""``bundle export``: torch model -> validated ONNX -> one bundle, written atomically.

The pipeline: normalise the reference inputs (:mod:`.inputs`), put the model in eval mode
and make sure it is deterministic, compute the research outputs with torch, export with
torch's ONNX exporter (dynamic batch; every torch call is in :mod:`._torch`), run the
exported graph in ONNX Runtime on the same inputs and FAIL CLOSED if it disagrees
(:mod:`.validation`), then write the reference set, the lock and the manifest
(:mod:`.assemble`) and rename the bundle into place.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.layout import MODEL_FILE, PIPELINE_FILE
from ..bundle.manifest import Coverage, Manifest, Tolerance, validate_name
from ..bundle.writer import BundleWriter
from ..errors import SpecError
from ..parity.tolerance import default_policy, scale_policy
from ..runtime.lock import TorchInfo
from ..runtime.runner import Runner
from ..runtime.session import SessionSettings, create_session
from . import _torch, calling, coverage
from .approximation import adopt_serving_graph, serving_precision, validate_approximation_options
from .assemble import assemble_manifest, write_environment, write_reference_set
from .batch_independence import refuse_batch_dependence
from .freezing import freeze_preprocessing
from .graphs import batch_first, graph_specs
from .inputs import length, normalise_inputs, output_names, raw_groups, to_numpy
from .max_lengths import find_max_lengths
from .onnx_files import copy_onnx_with_data
from .power import measure_power, report_power
from .preprocessing.graph import MIN_OPSET
from .research_dtypes import in_graph_dtypes, with_research_dtypes
from .shapes import dynamic_axes
from .spec import ExportSpec
from .staging import StagedPreprocessing, candidates_of, cover_groups, cover_staged, stage_groups, take
from .validation import validate_stage

log = logging.getLogger("paritybundle.export")

EXPORTERS = ("dynamo", "torchscript")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    manifest: Manifest
    was_training: bool


def export(
    model: Any,
    out: str | Path,
    *,
    reference_inputs: Any,
    name: str,
    version: str = "1",
    force: bool = False,
    **options: Any,
) -> ExportResult:
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
    _torch.require_module(spec.model)
    _validate_common(spec)
    model = spec.model
    raws = raw_groups(spec)
    # With preprocessing the model reads the features, positionally; otherwise the caller's inputs, by
    # forward's signature (calling.py).
    convention = calling.convention_for(model, raws[0], spec.input_names) if spec.preprocess is None else None
    groups = [candidates_of(g) for g in normalise_inputs(spec, convention.names if convention else None)]
    candidates = sum(length(g) for g in groups)
    staged = stage_groups(spec, groups)  # one per group: images of several sizes go through one Resize
    if staged is not None:
        groups = [s.raw for s in staged]
        convention = calling.features_convention(model, staged[0].preprocessor, staged[0].features)
    # What the model itself reads: the features when there is preprocessing, else the raw inputs.
    model_groups = [s.features for s in staged] if staged is not None else groups
    dynamic = dynamic_axes(spec, model_groups)
    device = _torch.model_device(model)
    with _torch.eval_mode(model) as was_training:
        if was_training:
            message = (
                f"model {type(model).__name__} was in training mode; it is exported in eval mode "
                "(dropout off, batch-norm running statistics), as serving will run it."
            )
            # logging's last-resort handler prints warnings even where nothing configured logging.
            log.warning(message)
        plan = _torch.plan_outputs(model, model_groups[0], device, convention)
        for dropped in plan.dropped:
            log.warning("%s: output %s; it is left out of the bundle.", spec.name, dropped)
        names = output_names(spec, list(plan.names))

        def research_of(features: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return _torch.run_model(model, features, device, convention, plan)

        research = [dict(zip(names, research_of(g), strict=True)) for g in model_groups]
        _torch.check_deterministic(model, model_groups[0], research[0], device, convention, plan)
        if staged is not None:
            staged, research, covered = cover_staged(spec, staged, research, candidates, research_of)
            groups = [s.raw for s in staged]
        else:
            groups, research, covered = cover_groups(spec, groups, research, candidates)
        reference_device = spec.reference_device or device.type
        reference_precision = spec.reference_precision or _torch.precision(model, device)
        with BundleWriter(out, force=force) as writer:
            model_path = writer.path(MODEL_FILE)
            _torch.export_onnx(
                spec,
                model,
                staged[0].features if staged is not None else groups[0],
                names,
                model_path,
                device,
                min_opset=MIN_OPSET if staged is not None else None,
                convention=convention,
                plan=plan,
                dynamic_axes=dynamic,
            )
            manifest = _write_bundle(
                writer,
                spec,
                groups,
                research,
                reference_device,
                reference_precision,
                exporter=f"torch.onnx ({spec.exporter})",
                torch_info=_torch.torch_info(device),
                research_label="torch",
                staged=staged,
                coverage=covered,
            )
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
        raise SpecError(
            "an ONNX model needs research_outputs: the outputs the research framework computed "
            "on reference_inputs (name -> array), which the bundle will be held to."
        )
    groups = normalise_inputs(spec)
    declared: Any = spec.research_outputs  # checked here: one mapping, or one per group
    if len(groups) > 1:
        if not isinstance(declared, (list, tuple)) or len(declared) != len(groups):
            raise SpecError(
                f"reference_inputs holds {len(groups)} groups, so research_outputs must be a list of "
                f"{len(groups)} mappings (name -> array), one per group."
            )
    else:
        declared = [declared] if isinstance(declared, Mapping) else declared
    if not isinstance(declared, (list, tuple)) or not all(isinstance(d, Mapping) for d in declared):
        raise SpecError(
            "research_outputs must map each output name to an array (a list of such mappings for reference groups)."
        )
    research = [{str(k): to_numpy(v, str(k)) for k, v in d.items()} for d in declared]
    if spec.preprocess is not None:
        raise SpecError(
            "preprocess is for torch models; an existing ONNX model takes the raw inputs its graph reads "
            "(convert preprocessing and model together, e.g. one scikit-learn Pipeline)."
        )
    for k, (inputs, outputs) in enumerate(zip(groups, research, strict=True)):
        counts = {name: a.shape[0] for name, a in outputs.items()}
        if set(counts.values()) != {length(inputs)}:
            where = f" of group {k}" if len(groups) > 1 else ""
            raise SpecError(
                f"research_outputs{where} must have one row per reference sample ({length(inputs)}), got {counts}."
            )
        if list(outputs) != list(research[0]):
            raise SpecError(f"research_outputs of group {k} name {list(outputs)}, group 0 names {list(research[0])}.")
    if spec.output_names is not None and list(spec.output_names) != list(research[0]):
        raise SpecError(
            f"output_names {list(spec.output_names)} differ from the research_outputs keys {list(research[0])}."
        )
    candidates = sum(length(g) for g in groups)
    pools = [coverage.candidate_rows(length(g)) for g in groups]
    groups = [g if pool is None else take(g, pool) for g, pool in zip(groups, pools, strict=True)]
    research = [r if pool is None else take(r, pool) for r, pool in zip(research, pools, strict=True)]
    # No probe rows: their research outputs would need the framework that made the model.
    groups, research, covered = cover_groups(spec, groups, research, candidates)
    with BundleWriter(out, force=force) as writer:
        copy_onnx_with_data(source, writer.path(MODEL_FILE), spec.external_data)
        # An int8 graph made its research outputs in int8 (unless the caller says what made them).
        precision = spec.reference_precision or ("int8" if serving_precision(source) == "int8" else "fp32")
        manifest = _write_bundle(
            writer,
            spec,
            groups,
            research,
            spec.reference_device or "cpu",
            precision,
            exporter=f"existing ONNX ({source.name})",
            torch_info=None,
            research_label="the research outputs",
            coverage=covered,
        )
        path = writer.commit(manifest)
    log.info("exported %s v%s to %s", spec.name, spec.version, path)
    return ExportResult(path=path, manifest=manifest, was_training=False)


def _write_bundle(
    writer: BundleWriter,
    spec: ExportSpec,
    groups: list[dict[str, np.ndarray]],
    research: list[dict[str, np.ndarray]],
    reference_device: str,
    reference_precision: str,
    *,
    exporter: str,
    torch_info: TorchInfo | None,
    research_label: str,
    staged: list[StagedPreprocessing] | None = None,
    coverage: Coverage | None = None,
) -> Manifest:
    """Validate the staged model.onnx against the research outputs in ONNX Runtime (fail closed),
    then stage everything else and return the manifest to commit.

    ``groups`` and ``research`` hold one dict per group of reference shapes (one without groups).
    With preprocessing (``staged``: one per group), ``preprocess.onnx`` is frozen and validated against the
    research path's features, merged with the model into ``pipeline.onnx``, and each of the model and the
    pipeline is validated against the research outputs.
    """
    names = list(research[0])
    for unknown in set(spec.per_output_tolerance) - set(names):
        raise SpecError(f"per_output_tolerance names {unknown!r}, but the outputs are {', '.join(names)}.")
    policy = default_policy(
        reference_device,
        reference_precision,
        per_output=dict(spec.per_output_tolerance),
        min_decision_agreement=spec.min_decision_agreement if spec.serving_model is None else None,
    )
    if spec.tolerance is not None:
        policy = policy.model_copy(update={"default": spec.tolerance})
    model_path = writer.path(MODEL_FILE)
    settings = SessionSettings(providers=tuple(spec.providers)) if spec.providers else SessionSettings()
    if staged is not None:  # custom operators the frozen preprocessing runs on (a tokenizer's)
        settings = replace(settings, custom_ops=tuple(getattr(staged[0].preprocessor, "custom_ops", ())))
    preprocessing = None
    if staged is None:
        # With external data both graphs name the same model.onnx.data, listed once.
        shutil.copyfile(model_path, writer.path(PIPELINE_FILE))
        raw_specs, output_specs, opset = graph_specs(model_path, groups[0], names, spec, research[0])
        groups, converted = in_graph_dtypes(groups, raw_specs, "reference input")
        raw_specs = with_research_dtypes(raw_specs, converted)
        model_specs, model_groups = raw_specs, groups
    else:
        feature_specs, output_specs, opset = graph_specs(model_path, staged[0].features, names, spec, research[0])
        model_specs, model_groups = feature_specs, [s.features for s in staged]
    # Research's outputs as the graph answers them (or a refusal now, never a bundle failing its own check).
    research, converted = in_graph_dtypes(research, output_specs, "research output")
    output_specs = batch_first(with_research_dtypes(output_specs, converted), research)
    # One session of the model for both probes below (a large model's session takes seconds to build); quiet,
    # since the longest-input search runs the graph on lengths it refuses.
    label = f"the model ({MODEL_FILE})"
    model_runner = Runner(
        create_session(model_path, settings, label=label, at_export=True, quiet=True), model_specs, output_specs
    )
    # One row per request: the model's rows must not depend on their batch-mates (before any validation,
    # which would otherwise blame the exporter for what the batch did).
    refuse_batch_dependence(model_runner, model_groups, policy, label)
    if staged is None:
        limits = find_max_lengths(model_runner, groups[0])
        raw_specs = [
            s.model_copy(update={"max_dims": {d: limits[d] for d in s.shape if d in limits}})
            if any(d in limits for d in s.shape)
            else s
            for s in raw_specs
        ]
    if staged is not None:
        raw_specs, preprocessing = freeze_preprocessing(writer, staged, opset, feature_specs, policy.default, settings)
        # The model alone, on the research features: a failure here is the model's, not the preprocessing's.
        validate_stage(
            writer.path(MODEL_FILE),
            feature_specs,
            output_specs,
            model_groups,
            research,
            policy,
            settings,
            f"the model ({MODEL_FILE}) on the research features",
            research_label,
        )
    comparisons = validate_stage(
        writer.path(PIPELINE_FILE),
        raw_specs,
        output_specs,
        groups,
        research,
        policy,
        settings,
        "the exported model" if staged is None else f"the merged {PIPELINE_FILE}",
        research_label,
    )
    # Each output's tolerance scaled to its own values and the error just measured (parity/tolerance.py);
    # the export's comparisons pass under it by construction (it is never below 10x that error).
    set_by_caller = set(names) if spec.tolerance is not None else set(spec.per_output_tolerance)
    every_value = {name: np.concatenate([r[name].reshape(-1) for r in research]) for name in names}
    policy = scale_policy(policy, every_value, {c.name: c.stats.max_abs for c in comparisons if c.stats}, set_by_caller)
    if spec.serving_model is not None:  # research's graph is proven above; what serves is a declared approximation
        approximation, comparisons = adopt_serving_graph(
            writer, spec, staged is not None, raw_specs, model_specs, output_specs, groups, research, policy, settings
        )
        policy = policy.model_copy(update={"approximation": approximation})
    power = measure_power(writer.path(PIPELINE_FILE), raw_specs, output_specs, groups, research, policy, settings)
    report_power(power, spec.name, require=spec.require_power)
    write_reference_set(writer, groups, research, model_groups if staged is not None else None)
    write_environment(writer, torch_info, settings.providers, settings.custom_ops)
    return assemble_manifest(
        writer,
        spec,
        input_specs=raw_specs,
        output_specs=output_specs,
        opset=opset,
        exporter=exporter,
        policy=policy,
        settings=settings,
        groups=groups,
        reference_device=reference_device,
        reference_precision=reference_precision,
        comparisons=comparisons,
        preprocessing=preprocessing,
        power=power,
        coverage=coverage,
    )


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
    validate_approximation_options(spec)
