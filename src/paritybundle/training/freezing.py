"""``preprocess.onnx``: the research preprocessing frozen, proven against its research path, and merged with
the model into ``pipeline.onnx`` (export calls this once the model is staged)."""

from __future__ import annotations

from typing import Any

from ..bundle.layout import MODEL_FILE, PIPELINE_FILE, PREPROCESS_FILE
from ..bundle.manifest import Preprocessing, TensorSpec, Tolerance
from ..bundle.writer import BundleWriter
from ..runtime.session import SessionSettings, create_session
from .graphs import input_specs
from .validation import validate_preprocessing


def freeze_preprocessing(
    writer: BundleWriter,
    staged: list[Any],
    opset: int,
    feature_specs: list[TensorSpec],
    tolerance: Tolerance,
    settings: SessionSettings,
) -> tuple[list[TensorSpec], Preprocessing]:
    """Write preprocess.onnx, prove it reproduces the research features (per raw input, group by group), merge
    pipeline.onnx. ``staged``: the staged preprocessing of each group of reference shapes (images of several
    sizes): the graph's input dimensions that differ between groups are symbolic, as the steps allow.

    Returns the raw input specs (read from the frozen graph) and the manifest's preprocessing section.
    """
    import onnx

    from .compose import merge_files

    first = staged[0]
    graph = first.preprocessor.to_onnx(first.raw, opset)
    _free_differing_dims(graph, [s.raw for s in staged])
    onnx.save(graph, str(writer.path(PREPROCESS_FILE)))
    raw_specs = input_specs(graph, PREPROCESS_FILE, first.raw, first.preprocessor.replaces_nan)
    described = first.preprocessor.describe(feature_specs)
    if hasattr(first.preprocessor, "prove_frozen"):  # token for token, naming the text (before the generic proof)
        session = create_session(writer.path(PREPROCESS_FILE), settings, label=PREPROCESS_FILE, at_export=True)
        first.preprocessor.prove_frozen(first.raw, first.features, first.probe_reasons, session)
        rules = first.preprocessor.text_rules()
        raw_specs = [s.model_copy(update={"text": rules}) if s.dtype == "string" else s for s in raw_specs]
    for group in staged:
        validate_preprocessing(
            writer.path(PREPROCESS_FILE),
            raw_specs,
            feature_specs,
            group.raw,
            group.features,
            described,
            tolerance,
            settings,
        )
    merge_files(writer.path(PREPROCESS_FILE), writer.path(MODEL_FILE), writer.path(PIPELINE_FILE))
    return raw_specs, described


def _free_differing_dims(graph: Any, groups: list[dict[str, Any]]) -> None:
    """Make each graph-input dimension whose size differs between groups symbolic (``image_dim1``)."""
    for value in graph.graph.input:
        shapes = {tuple(group[value.name].shape[1:]) for group in groups if value.name in group}
        if len(shapes) < 2:
            continue
        dims = value.type.tensor_type.shape.dim
        for axis in range(1, len(dims)):
            if len({shape[axis - 1] for shape in shapes}) > 1:
                dims[axis].Clear()
                dims[axis].dim_param = f"{value.name}_dim{axis}"
