"""The export spec, and loading one from ``path/to/file.py:name`` or ``module:name``.

Nothing here imports torch; the spec only holds references to the user's objects.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle.manifest import Tolerance
from ..errors import SpecError

DEFAULT_MAX_REFERENCE_SAMPLES = 1000


@dataclass
class ExportSpec:
    """Everything ``bundle export`` needs to write a bundle.

    Args:
        model: a ``torch.nn.Module`` (put into eval mode for export), or the path of
            an ``.onnx`` model made elsewhere, with ``research_outputs``.
        reference_inputs: raw inputs as a caller would send them: one array/tensor for a
            single-input model, a tuple (``forward``'s parameters in order, named after them),
            or a mapping of ``forward`` parameter name -> array (passed by keyword). A list of
            these is a list of *groups*, each with its own non-batch shape (sequence lengths,
            image sizes), stored and checked group by group.
        name: the bundle's name (letters, digits, ``.``, ``_``, ``-``).
        version: the bundle's version string.
        input_names: names of the model's inputs (default: mapping keys, or ``input``).
        output_names: names of the model's outputs (default: from its result: ``output`` for a
            tensor, ``output_K`` for a tuple, keys and fields of a dict, ``ModelOutput`` or
            namedtuple, dotted below the top, e.g. ``hidden_states.0``).
        dynamic_axes: ``{input_name: {axis_index: "axis_name"}}`` as in ``torch.onnx.export``: axes
            besides the batch (always dynamic) that may vary when serving, e.g. ``{"input_ids": {1: "seq"}}``.
        score_outputs: outputs that are scores over classes (argmax agreement is checked,
            per position for rank > 2). None: auto-detect float outputs of shape
            [batch, classes>=2], and [batch, ..., classes] ones named ``logits``/``scores``/``probabilities``.
        tolerance: replaces the default tolerance for every output.
        per_output_tolerance: tolerance per named output.
        max_reference_samples: cap on reference samples kept, chosen for coverage (every class,
            category, NaN column and extreme row first, then a seeded random rest).
        reference_device: the device that produced the research outputs (``cpu``, ``cuda``);
            detected from the model when None.
        reference_precision: the precision they were produced in (``fp32``, ``tf32``, ``bf16``,
            ``fp16``, ``int8``); detected from the model when None.
        params: provenance recorded in the manifest: the training parameters.
        metrics: provenance: the model's evaluation metrics.
        data_hashes: provenance: hashes of the data it was trained on.
        exporter: ``"dynamo"`` (torch's default) or ``"torchscript"`` (legacy).
        opset: ONNX opset (None: the exporter's default).
        source_path: a file of the training code, for the git commit (default: cwd).
        research_outputs: with an ``.onnx`` model: name -> the outputs the research
            framework computed on ``reference_inputs`` (e.g. ``predict_proba``).
        external_data: keep weights in ``model.onnx.data`` (None: when parameters
            reach 512 MiB; with an ``.onnx`` model, when its data files do).
        providers: ONNX Runtime execution providers export validates with, in priority
            order, recorded as what serving uses (None: CPU). ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]`` on a GPU machine makes a bundle served on GPU, whose
            ``requirements-serve.txt`` pins ``onnxruntime-gpu``.
        require_power: refuse to export (exit 2) when the reference set does not detect a 1%
            weight perturbation (measured at export either way, and recorded).
        preprocess: fitted preprocessing from raw inputs to the model's input: a
            ``paritybundle.preprocess.Pipeline``/``Columns``, a fitted scikit-learn
            transformer (needs the ``sklearn`` extra), or a ``torch.nn.Module``. Its
            output name becomes the model's input name; ``reference_inputs`` are raw.
        serving_model: a serving graph that differs from research by design (int8, fp16): the path
            of an ``.onnx`` reading the research graph's inputs, an ``onnx.ModelProto``, or a function
            given the research graph's path returning either (e.g. ``quantize_dynamic`` on it). It is
            what the bundle serves, judged by ``min_decision_agreement`` and ``score_error``
            (training/approximation.py); research's outputs stay the reference.
        score_error: with ``serving_model``: the declared distribution of absolute error, an
            ``ErrorBudget(p50=..., p99=..., max=...)`` for every float output or a mapping per output.
        min_decision_agreement: the least share of decisions (argmax per sample or position; equal
            labels with a ``serving_model``) that must agree with research (None: the default, every
            decision at fp32).
    """

    model: Any
    reference_inputs: Any
    name: str
    version: str = "1"
    input_names: Sequence[str] | None = None
    output_names: Sequence[str] | None = None
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None
    score_outputs: Sequence[str] | None = None
    tolerance: Tolerance | None = None
    per_output_tolerance: Mapping[str, Tolerance] = field(default_factory=dict)
    max_reference_samples: int | None = DEFAULT_MAX_REFERENCE_SAMPLES
    reference_device: str | None = None
    reference_precision: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    data_hashes: Mapping[str, str] = field(default_factory=dict)
    exporter: str = "dynamo"
    opset: int | None = None
    source_path: str | None = None
    research_outputs: Mapping[str, Any] | None = None
    external_data: bool | None = None
    providers: Sequence[str] | None = None
    preprocess: Any = None
    require_power: bool = False
    serving_model: Any = None
    score_error: Any = None
    min_decision_agreement: float | None = None


def load_spec(reference: str) -> ExportSpec:
    """Resolve ``path/to/file.py:name`` or ``module:name`` to an :class:`ExportSpec`.

    ``name`` may be the spec itself or a function taking no arguments that returns one.

    Raises:
        SpecError: the file/module/name cannot be found, or it is not an export spec.

    Example:
        >>> load_spec("examples/digits/train.py:make_spec").name  # doctest: +SKIP
        'digits'
    """
    target, sep, attribute = reference.rpartition(":")
    if not sep or not target or not attribute:
        raise SpecError(f"export spec {reference!r} must look like path/to/file.py:name or module:name.")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _module_from_file(Path(target))
        source = str(Path(target).resolve())
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name and target.startswith(exc.name):
                raise SpecError(
                    f"module {target!r} cannot be imported (no module named {exc.name!r}); "
                    "check the name or pass a file path."
                ) from None
            raise
        source = getattr(module, "__file__", None) or ""
    if not hasattr(module, attribute):
        raise SpecError(f"{target} has no attribute {attribute!r}; name the function that returns the export spec.")
    value = getattr(module, attribute)
    if callable(value) and not isinstance(value, ExportSpec):
        try:
            value = value()
        except Exception as exc:
            raise SpecError(f"{reference} raised {_where(exc)}; fix the training code.") from exc
    if not isinstance(value, ExportSpec):
        raise SpecError(
            f"{reference} gave a {type(value).__name__}, not a paritybundle.ExportSpec; "
            "return ExportSpec(model=..., reference_inputs=..., name=...)."
        )
    if value.source_path is None and source:
        value.source_path = source
    return value


def _module_from_file(path: Path) -> Any:
    if not path.exists():
        raise SpecError(f"export spec file {path} does not exist.")
    if path.suffix != ".py":
        raise SpecError(f"export spec file {path} is not a .py file.")
    module_name = f"_paritybundle_spec_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"export spec file {path} cannot be loaded as a Python module.")
    module = importlib.util.module_from_spec(spec)
    # The training script may import its siblings.
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise SpecError(f"running {path} raised {_where(exc)}; fix the training code.") from exc
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _where(exc: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame, for a one-line report."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    location = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{location}"
