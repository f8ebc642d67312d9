"""Every torch call of the training side, behind one private module: the only one that imports torch.

torch is imported lazily (:func:`import_torch`), so importing paritybundle, even its training
package, never loads it; the serving side never reaches this module at all (an
import-linter contract in ``pyproject.toml`` holds both).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.external_data import check_external_data
from ..errors import ExportError, SpecError, UsageError
from ..runtime.lock import TorchInfo
from .inputs import first_paragraph, length

# Reference outputs are computed this many samples at a time to bound memory.
_TORCH_BATCH = 256


def import_torch() -> Any:
    """torch, or a usage error saying how to install the training extra."""
    try:
        import torch
    except ImportError:
        raise UsageError(
            "exporting needs torch, which is not installed here; install the training extra: "
            "pip install 'paritybundle[train]'."
        ) from None
    return torch


def is_module(value: Any) -> bool:
    """A ``torch.nn.Module`` (without importing torch when the caller never did)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def require_module(model: Any) -> None:
    """Refuse a model that is not a ``torch.nn.Module`` (nor an ``.onnx`` path)."""
    if not isinstance(model, import_torch().nn.Module):
        raise SpecError(f"the export spec's model is a {type(model).__name__}, not a torch.nn.Module "
                        "(or a path to an .onnx file with research_outputs).")


def model_device(model: Any) -> Any:
    torch = import_torch()
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def precision(model: Any, device: Any) -> str:
    torch = import_torch()
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
def eval_mode(model: Any) -> Iterator[bool]:
    """Eval mode for the export; the caller's model gets its mode back afterwards."""
    was_training = bool(model.training)
    model.eval()
    try:
        yield was_training
    finally:
        model.train(was_training)


def _tensors(inputs: Mapping[str, np.ndarray], device: Any, start: int = 0, stop: int | None = None) -> list[Any]:
    torch = import_torch()
    tensors = []
    for name, array in inputs.items():
        try:
            tensors.append(torch.from_numpy(np.ascontiguousarray(array[start:stop])).to(device))
        except TypeError as exc:
            raise SpecError(f"reference input {name!r} of dtype {array.dtype} cannot become a tensor: {exc}.") from None
    return tensors


def _flatten_outputs(result: Any) -> list[Any]:
    torch = import_torch()
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and result and all(isinstance(r, torch.Tensor) for r in result):
        return list(result)
    raise SpecError(
        f"the model returned {type(result).__name__}; paritybundle exports models returning a tensor "
        "or a tuple/list of tensors."
    )


def run_model(model: Any, inputs: Mapping[str, np.ndarray], device: Any) -> list[np.ndarray]:
    """The model on ``inputs``, ``_TORCH_BATCH`` samples at a time under ``no_grad``; outputs as numpy."""
    torch = import_torch()
    total = length(inputs)
    parts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, total, _TORCH_BATCH):
            try:
                result = model(*_tensors(inputs, device, start, start + _TORCH_BATCH))
            except SpecError:
                raise
            except Exception as exc:
                raise SpecError(
                    f"the model raised on the reference inputs ({type(exc).__name__}: {first_paragraph(exc)}); "
                    "check their shape and dtype match what forward() expects."
                ) from None
            outputs = [t.detach().float().cpu().numpy() if t.dtype in (torch.float16, torch.bfloat16)
                       else t.detach().cpu().numpy() for t in _flatten_outputs(result)]
            if parts and len(outputs) != len(parts):
                raise SpecError("the model returned a different number of outputs for different batches.")
            if not parts:
                parts = [[] for _ in outputs]
            for bucket, value in zip(parts, outputs):
                bucket.append(value)
    return [np.concatenate(bucket, axis=0) for bucket in parts]


def check_deterministic(model: Any, inputs: Mapping[str, np.ndarray], research: Mapping[str, np.ndarray],
                        device: Any) -> None:
    """Refuse a model whose eval-mode outputs change between two identical calls."""
    probe = {name: a[:_TORCH_BATCH] for name, a in inputs.items()}
    again = run_model(model, probe, device)
    for (name, first), second in zip(research.items(), again):
        first = first[:_TORCH_BATCH]
        if first.shape != second.shape or not np.allclose(first, second, rtol=1e-5, atol=1e-6, equal_nan=True):
            raise ExportError(
                f"output {name!r} changes between two identical calls in eval mode, so no reference can "
                "hold; remove randomness from forward() (e.g. F.dropout(training=True), torch.rand) before exporting."
            )


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
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


def export_onnx(spec: Any, model: Any, inputs: Mapping[str, np.ndarray], output_names: list[str],
                path: Path, device: Any, *, min_opset: int | None = None) -> None:
    """torch's ONNX exporter (``spec.exporter``), dynamic batch axis; the exporter's failure is an ExportError."""
    torch = import_torch()
    opset = spec.opset
    if min_opset is not None and opset is not None and opset < min_opset:
        raise SpecError(f"opset {opset} is too old for the preprocessing graph; use opset {min_opset} or newer.")
    # The batch dimension must be at least 2 in the example, or the exporter fixes it to 1.
    example = {name: a[:4] if a.shape[0] >= 2 else np.concatenate([a, a], axis=0) for name, a in inputs.items()}
    args = tuple(_tensors(example, device))
    names = list(inputs)
    try:
        with quiet_exporter():
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
                    opset_version=opset or max(min_opset or 0, 17),
                )
    except Exception as exc:
        raise ExportError(
            f"torch's ONNX exporter ({spec.exporter}) could not convert {type(model).__name__}: "
            f"{type(exc).__name__}: {first_paragraph(exc)}"
        ) from None
    # Weights the exporter kept in side files must be exactly the files model.onnx refers to.

    staged = {p.name for p in path.parent.iterdir() if p.is_file()}
    check_external_data(path.name, path.parent, staged)


# Models with at least this many bytes of parameters keep their weights in a side file
# (model.onnx.data): protobuf cannot hold 2 GB, and a small model.onnx is cheap to parse.
EXTERNAL_DATA_ABOVE_BYTES = 512 * 1024 ** 2


def _use_external_data(spec: Any, model: Any) -> bool:
    if spec.external_data is not None:
        return spec.external_data
    size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return size >= EXTERNAL_DATA_ABOVE_BYTES


def torch_info(device: Any) -> TorchInfo:
    torch = import_torch()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return TorchInfo(version=torch.__version__, cuda=torch.version.cuda, cudnn=cudnn, device_name=name)


def parameter_count(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def buffers(module: Any, *, limit: int) -> dict[str, np.ndarray]:
    """The first ``limit`` named buffers (running statistics, say) as numpy arrays."""
    return {name: buffer.detach().cpu().numpy() for name, buffer in list(module.named_buffers())[:limit]}
