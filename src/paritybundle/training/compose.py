"""``pipeline.onnx``: the preprocessing graph and the model graph merged into one (onnx.compose).

Serving runs one graph, so one ONNX Runtime session sees the whole computation
(and can optimise across the seam); the check proves the merged graph still
equals the two stages run in sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExportError

# Names inside the preprocessing graph get this prefix so they cannot collide with the model's.
PREPROCESS_PREFIX = "preprocess/"


def _default_opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def merge(preprocess: Any, model: Any) -> Any:
    """One graph: ``preprocess``'s outputs feed ``model``'s inputs of the same names.

    The preprocessing graph is prefixed (except its graph inputs and outputs) and
    brought to the model's IR version; both must use the same default-domain opset.
    ``model`` may refer to external data; its tensors are not loaded, so the merged
    graph refers to the same weights file.
    """
    import onnx
    import onnx.compose

    if _default_opset(preprocess) != _default_opset(model):
        raise ExportError(
            f"the preprocessing graph uses opset {_default_opset(preprocess)} but the model uses "
            f"{_default_opset(model)}; they cannot be merged."
        )
    feature_names = [o.name for o in preprocess.graph.output]
    model_inputs = [i.name for i in model.graph.input]
    if sorted(feature_names) != sorted(model_inputs):
        raise ExportError(f"the preprocessing outputs {feature_names} do not match the model's inputs {model_inputs}.")
    prefixed = onnx.compose.add_prefix(preprocess, PREPROCESS_PREFIX, rename_inputs=False, rename_outputs=False)
    prefixed.ir_version = model.ir_version
    domains = {o.domain: o.version for o in model.opset_import}
    for opset in prefixed.opset_import:
        if opset.domain in domains and opset.domain not in ("", "ai.onnx") and domains[opset.domain] != opset.version:
            opset.version = domains[opset.domain]
    try:
        merged = onnx.compose.merge_models(
            prefixed,
            model,
            io_map=[(n, n) for n in feature_names],
            producer_name="paritybundle",
            doc_string="preprocess -> model",
        )
    except Exception as exc:  # onnx raises ValueError/ValidationError for graphs that do not fit together
        raise ExportError(f"merging preprocessing and model into one graph failed: {exc}") from None
    return merged


def merge_files(preprocess_path: Path, model_path: Path, pipeline_path: Path) -> None:
    """Merge the staged ``preprocess.onnx`` and ``model.onnx`` into ``pipeline.onnx`` beside them."""
    import onnx

    merged = merge(onnx.load(str(preprocess_path)), onnx.load(str(model_path), load_external_data=False))
    onnx.save(merged, str(pipeline_path))
    # Checked by path so external data (relative to the same folder) is found.
    onnx.checker.check_model(str(pipeline_path))
