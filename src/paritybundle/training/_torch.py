"""Every torch call of the training side, behind one private module: the only one that imports torch.

torch is imported lazily (:func:`import_torch`), so importing paritybundle, even its training
package, never loads it; the serving side never reaches this module at all (an
import-linter contract in ``pyproject.toml`` holds both).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.external_data import check_external_data
from ..errors import ExportError, SpecError, UsageError
from ..runtime.lock import TorchInfo
from .calling import Convention
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
        raise SpecError(
            f"the export spec's model is a {type(model).__name__}, not a torch.nn.Module "
            "(or a path to an .onnx file with research_outputs)."
        )


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
    if device.type != "cpu" and (
        torch.get_float32_matmul_precision() != "highest" or getattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ):
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


# Output leaves under these keys are a decoder's key/value cache: state for the next call, not a result.
CACHE_KEYS = frozenset({"past_key_values", "cache", "mems"})

Path_ = tuple[Any, ...]


def _leaves(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every leaf of a model's result with its path: keys of mappings (dicts, ``ModelOutput``s),
    indices of tuples and lists (namedtuples too; :func:`output_name` uses their field names)."""
    torch = import_torch()
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)))
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path, value


def _follow(value: Any, path: Path_) -> Any:
    for step in path:
        value = value[step]
    return value


def output_name(result: Any, path: Path_) -> str:
    """``output`` for a lone tensor, ``output_K`` for a plain tuple's items, keys and namedtuple fields
    as they are (``logits``), joined by dots below the top (``hidden_states.0``)."""
    if not path:
        return "output"
    parts, node = [], result
    for depth, step in enumerate(path):
        fields = getattr(node, "_fields", None) if isinstance(node, tuple) else None
        if isinstance(step, int) and fields:
            parts.append(str(fields[step]))
        elif isinstance(step, int) and depth == 0:
            parts.append(f"output_{step}")
        else:
            parts.append(str(step))
        node = node[step]
    return ".".join(parts)


@dataclass(frozen=True)
class OutputPlan:
    """Which leaves of the model's result are outputs, in order, and their names."""

    paths: tuple[Path_, ...]
    names: tuple[str, ...]
    dropped: tuple[str, ...] = ()

    def pick(self, result: Any) -> list[Any]:
        return [_follow(result, path) for path in self.paths]


def _call(model: Any, tensors: list[Any], convention: Convention | None) -> Any:
    if convention is not None and convention.by_keyword:
        return model(**dict(zip(convention.names, tensors, strict=True)))
    return model(*tensors)


def _raised(exc: Exception, what: str = "the reference inputs") -> SpecError:
    return SpecError(
        f"the model raised on {what} ({type(exc).__name__}: {first_paragraph(exc)}); "
        "check their shape and dtype match what forward() expects."
    )


def plan_outputs(
    model: Any, inputs: Mapping[str, np.ndarray], device: Any, convention: Convention | None
) -> OutputPlan:
    """Run the model on 2 and 3 reference rows and decide its outputs: every tensor leaf of the result,
    caches and non-tensor leaves dropped (with a notice). Refuses outputs serving could not split per sample.

    Raises:
        SpecError: no tensor output, a 0-d output, or an output whose first axis is not the batch.
    """
    torch = import_torch()
    rows = length(inputs)
    results = []
    with torch.no_grad():
        for count in (2, 3):
            picked = {name: np.take(a, np.arange(count) % rows, axis=0) for name, a in inputs.items()}
            try:
                results.append(_call(model, _tensors(picked, device), convention))
            except Exception as exc:
                raise _raised(exc) from exc
    result = results[0]
    kept: list[Any] = []
    names: list[str] = []
    dropped: list[str] = []
    for path, leaf in _leaves(result):
        name = output_name(result, path)
        if (path and isinstance(path[0], str) and path[0] in CACHE_KEYS) or type(leaf).__name__.endswith("Cache"):
            label = output_name(result, path[:1]) if path else name
            if not any(d.startswith(f"{label}:") for d in dropped):
                dropped.append(
                    f"{label}: a key/value cache, not a result; pass use_cache=False (to forward or the "
                    "config) or export a wrapper that returns what serving should answer"
                )
            continue
        if not isinstance(leaf, torch.Tensor):
            dropped.append(f"{name}: {type(leaf).__name__}, not a tensor")
            continue
        if leaf.ndim == 0:
            raise SpecError(
                f"output {name!r} is a single number (0-d) for the whole batch, so serving cannot answer "
                "each request with its own value; return per-sample values shaped [batch, ...] "
                "(a loss: do not pass labels; a statistic: compute it outside the model)."
            )
        other = _follow(results[1], path)
        if leaf.shape[0] != 2 or not isinstance(other, torch.Tensor) or other.ndim == 0 or other.shape[0] != 3:
            shapes = f"{list(leaf.shape)} for 2 samples and {list(getattr(other, 'shape', []))} for 3"
            raise SpecError(
                f"output {name!r} has shape {shapes}: its first axis is not the batch, and serving splits "
                "and batches requests along the first axis; return it batch-first (e.g. y.T or "
                "y.movedim(batch_axis, 0))."
            )
        kept.append(path)
        names.append(name)
    if not kept:
        raise SpecError(
            f"the model returned {type(result).__name__} without a tensor in it; paritybundle exports "
            "models whose result holds tensors (a tensor, tuple, dict, ModelOutput or namedtuple)."
        )
    if len(set(names)) != len(names):
        raise SpecError(f"the model's outputs would be named {names}, with repeats; pass output_names.")
    return OutputPlan(tuple(kept), tuple(names), tuple(dropped))


def run_model(
    model: Any,
    inputs: Mapping[str, np.ndarray],
    device: Any,
    convention: Convention | None = None,
    plan: OutputPlan | None = None,
) -> list[np.ndarray]:
    """The model on ``inputs``, ``_TORCH_BATCH`` samples at a time under ``no_grad``; the outputs
    ``plan`` picks (every tensor of a plain tensor/tuple result without one) as numpy."""
    torch = import_torch()
    total = length(inputs)
    parts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, total, _TORCH_BATCH):
            try:
                result = _call(model, _tensors(inputs, device, start, start + _TORCH_BATCH), convention)
            except SpecError:
                raise
            except Exception as exc:
                raise _raised(exc) from exc
            tensors = plan.pick(result) if plan is not None else _flatten_outputs(result)
            outputs = [
                t.detach().float().cpu().numpy()
                if t.dtype in (torch.float16, torch.bfloat16)
                else t.detach().cpu().numpy()
                for t in tensors
            ]
            if parts and len(outputs) != len(parts):
                raise SpecError("the model returned a different number of outputs for different batches.")
            if not parts:
                parts = [[] for _ in outputs]
            for bucket, value in zip(parts, outputs, strict=True):
                bucket.append(value)
    return [np.concatenate(bucket, axis=0) for bucket in parts]


def _flatten_outputs(result: Any) -> list[Any]:
    """A preprocessing module's result: a tensor or a flat tuple/list of tensors."""
    torch = import_torch()
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and result and all(isinstance(r, torch.Tensor) for r in result):
        return list(result)
    raise SpecError(
        f"the preprocessing module returned {type(result).__name__}; return a tensor or a tuple/list of tensors."
    )


def check_deterministic(
    model: Any,
    inputs: Mapping[str, np.ndarray],
    research: Mapping[str, np.ndarray],
    device: Any,
    convention: Convention | None = None,
    plan: OutputPlan | None = None,
) -> None:
    """Refuse a model whose eval-mode outputs change between two identical calls."""
    probe = {name: a[:_TORCH_BATCH] for name, a in inputs.items()}
    again = run_model(model, probe, device, convention, plan)
    for (name, first), second in zip(research.items(), again, strict=True):
        first = first[:_TORCH_BATCH]
        if first.shape != second.shape or not np.allclose(first, second, rtol=1e-5, atol=1e-6, equal_nan=True):
            raise ExportError(
                f"output {name!r} changes between two identical calls in eval mode, so no reference can "
                "hold; remove randomness from forward() (e.g. F.dropout(training=True), torch.rand) before exporting."
            )


def _adapter(model: Any, convention: Convention | None, plan: OutputPlan | None) -> Any:
    """The model as the exporter sees it: positional tensors in, a flat tuple of the planned outputs out."""
    if plan is None and (convention is None or not convention.by_keyword):
        return model
    torch = import_torch()

    class Adapter(torch.nn.Module):  # type: ignore[name-defined]  # torch is imported lazily, as a value
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            result = _call(self.model, list(tensors), convention)
            return tuple(plan.pick(result)) if plan is not None else result

    Adapter.__name__ = Adapter.__qualname__ = type(model).__name__
    return Adapter()


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
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    spec: Any,
    model: Any,
    inputs: Mapping[str, np.ndarray],
    output_names: list[str],
    path: Path,
    device: Any,
    *,
    min_opset: int | None = None,
    convention: Convention | None = None,
    plan: OutputPlan | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> None:
    """torch's ONNX exporter (``spec.exporter``): the batch axis and ``dynamic_axes`` stay dynamic (named
    in the graph), inputs reach ``forward`` as ``convention`` says, ``plan`` picks the outputs. The
    exporter's failure is an ExportError whose message carries the underlying cause (the exception
    chained to it holds the full trace, for ``--verbose``)."""
    torch = import_torch()
    opset = spec.opset
    if min_opset is not None and opset is not None and opset < min_opset:
        raise SpecError(f"opset {opset} is too old for the preprocessing graph; use opset {min_opset} or newer.")
    # The batch dimension must be at least 2 in the example, or the exporter fixes it to 1.
    example = {name: a[:4] if a.shape[0] >= 2 else np.concatenate([a, a], axis=0) for name, a in inputs.items()}
    args = tuple(_tensors(example, device))
    names = list(inputs)
    axes = {
        name: {0: "batch", **{int(k): str(v) for k, v in (dynamic_axes or {}).get(name, {}).items()}} for name in names
    }
    exported = _adapter(model, convention, plan)
    try:
        with quiet_exporter():
            if spec.exporter == "dynamo":
                # One Dim per name: inputs sharing a name (input_ids, attention_mask: "seq") share a size.
                dims = {dim: torch.export.Dim(dim) for axis_names in axes.values() for dim in axis_names.values()}
                shapes = tuple({axis: dims[dim] for axis, dim in axes[name].items()} for name in names)
                program = torch.onnx.export(
                    exported,
                    args,
                    None,
                    dynamo=True,
                    input_names=names,
                    output_names=output_names,
                    dynamic_shapes=(shapes,) if exported is not model else shapes,
                    opset_version=opset,
                    verbose=False,
                )
                program.save(str(path), external_data=_use_external_data(spec, model))
            else:
                torch.onnx.export(
                    exported,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=names,
                    output_names=output_names,
                    dynamic_axes={**axes, **{n: {0: "batch"} for n in output_names}},
                    opset_version=opset or max(min_opset or 0, 17),
                )
    except Exception as exc:
        raise ExportError(
            f"torch's ONNX exporter ({spec.exporter}) could not convert {type(model).__name__}: {exporter_cause(exc)} "
            "(bundle export --verbose prints the full trace)."
        ) from exc
    # Weights the exporter kept in side files must be exactly the files model.onnx refers to.
    staged = {p.name for p in path.parent.iterdir() if p.is_file()}
    check_external_data(path.name, path.parent, staged)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# torch's exporter wraps the real failure in banners: "Failed to export the model with torch.export.
# This is step 1/3 ...", then advice on how to report it. Those lines say where, not why.
_BANNER = re.compile(
    r"^(Failed to (export|convert|decompose)|This is step \d|Next steps|- |\(Refer to|If you |"
    r"Please |For more information|Traceback|The above exception|Exception raised|You can suppress)"
)


def exporter_cause(exc: BaseException, limit: int = 600) -> str:
    """``Type: message`` of the innermost exception the exporter chained, ANSI codes and banners removed."""
    chain, seen = [exc], {id(exc)}
    while True:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt is None or id(nxt) in seen:
            break
        chain.append(nxt)
        seen.add(id(nxt))
    for candidate in reversed(chain):
        lines = [_ANSI.sub("", line).strip() for line in str(candidate).splitlines()]
        lines = [line for line in lines if line and not _BANNER.match(line)]
        if lines:
            text = " ".join(lines[:3])
            text = text if len(text) <= limit else text[:limit] + " ..."
            return f"{type(candidate).__name__}: {text}"
    return type(exc).__name__


# Models with at least this many bytes of parameters keep their weights in a side file
# (model.onnx.data): protobuf cannot hold 2 GB, and a small model.onnx is cheap to parse.
EXTERNAL_DATA_ABOVE_BYTES = 512 * 1024**2


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
