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


def freeze_preprocessing(writer: BundleWriter, staged: Any, opset: int, feature_specs: list[TensorSpec],
                          tolerance: Tolerance, settings: SessionSettings) -> tuple[list[TensorSpec], Preprocessing]:
    """Write preprocess.onnx, prove it reproduces the research features (per raw input), merge pipeline.onnx.

    Returns the raw input specs (read from the frozen graph) and the manifest's preprocessing section.
    """
    import onnx

    from .compose import merge_files

    graph = staged.preprocessor.to_onnx(staged.raw, opset)
    onnx.save(graph, str(writer.path(PREPROCESS_FILE)))
    raw_specs = input_specs(graph, PREPROCESS_FILE, staged.raw, staged.preprocessor.replaces_nan)
    described = staged.preprocessor.describe(feature_specs)
    if hasattr(staged.preprocessor, "prove_frozen"):  # token for token, naming the text (before the generic proof)
        session = create_session(writer.path(PREPROCESS_FILE), settings, label=PREPROCESS_FILE, at_export=True)
        staged.preprocessor.prove_frozen(staged.raw, staged.features, staged.probe_reasons, session)
        rules = staged.preprocessor.text_rules()
        raw_specs = [s.model_copy(update={"text": rules}) if s.dtype == "string" else s for s in raw_specs]
    validate_preprocessing(writer.path(PREPROCESS_FILE), raw_specs, feature_specs, staged.raw, staged.features,
                           described, tolerance, settings)
    merge_files(writer.path(PREPROCESS_FILE), writer.path(MODEL_FILE), writer.path(PIPELINE_FILE))
    return raw_specs, described
