"""A ``torch.nn.Module`` as a :class:`Preprocessor`: run with torch for research, exported with
torch's ONNX exporter like the model (numbers and images only: torch has no strings).
Every torch call goes through :mod:`paritybundle.training._torch`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...bundle.manifest import PreprocessColumn, PreprocessStep
from ...errors import SpecError
from .. import _torch
from .fitted import json_value
from .pipeline import Preprocessor


class TorchPreprocess(Preprocessor):
    """A ``torch.nn.Module`` used as preprocessing: run with torch for research, exported
    with torch's ONNX exporter like the model (numbers and images only: torch has no strings)."""

    source = "torch"

    def __init__(self, module: Any, input_names: list[str], output: str = "features", *, spec: Any) -> None:
        self.module, self.input_names, self._output, self.spec = module, input_names, output, spec

    def research(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with _torch.eval_mode(self.module):
            outputs = _torch.run_model(self.module, raw, _torch.model_device(self.module))
        if len(outputs) != 1:
            raise SpecError(f"the preprocessing module returns {len(outputs)} tensors; return one feature tensor.")
        return {self._output: outputs[0]}

    def to_onnx(self, raw: Mapping[str, np.ndarray], opset: int) -> Any:
        import tempfile
        from pathlib import Path

        import onnx

        with tempfile.TemporaryDirectory() as folder, _torch.eval_mode(self.module):
            path = Path(folder) / "preprocess.onnx"
            spec = _OpsetSpec(self.spec, opset)
            _torch.export_onnx(spec, self.module, raw, [self._output], path, _torch.model_device(self.module))
            return onnx.load(str(path))

    def columns(self) -> list[PreprocessColumn]:
        state: dict[str, Any] = {"class": type(self.module).__name__, "parameters": _torch.parameter_count(self.module)}
        for name, buffer in _torch.buffers(self.module, limit=32).items():
            state[name] = json_value(buffer)
        step = PreprocessStep(kind="torch.nn.Module", nan="propagates", params=state)
        return [PreprocessColumn(input=name, features=None, steps=[step]) for name in self.input_names]

    def __repr__(self) -> str:
        return " ".join(repr(self.module).split())[:4096]


class _OpsetSpec:
    """The export spec with the model's opset, so both graphs can be merged."""

    def __init__(self, spec: Any, opset: int) -> None:
        self._spec, self.opset = spec, opset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spec, name)

    @property
    def external_data(self) -> bool:
        return False
