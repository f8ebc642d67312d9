"""paritybundle: what research trained is what production serves.

The pipeline, in the order it runs:

1. Training side (``paritybundle.training``, the only code that imports torch):
   ``export(model, out, reference_inputs=...)`` puts the model in eval mode, computes
   the research outputs, exports ONNX, proves ONNX Runtime reproduces torch (fail
   closed), and writes the bundle atomically: ``pipeline.onnx``, ``model.onnx``, the
   reference set, the environment lock, and ``bundle.json`` hashing every file.
2. Serving side (this package; ONNX Runtime, never torch): ``verify(path)`` checks
   the manifest and every hash; ``load(path)`` returns a runtime with ``predict``;
   ``check(path)`` runs the reference inputs and returns a :class:`CheckReport`,
   truthy when parity holds.

Importing ``paritybundle`` never imports torch: ``export`` and ``ExportSpec`` are
resolved lazily from ``paritybundle.training`` on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checker import CheckReport, ServingRuntime, check, load, verify
from .errors import (
    BundleInvalid, EnvironmentRefused, ExportError, ExportParityError, InputValidationError,
    ParityBundleError, ParityFailure, SpecError, UsageError,
)
from .manifest import Manifest, Tolerance
from .runtime import SessionSettings

if TYPE_CHECKING:
    from .training import ExportResult, ExportSpec, export

__version__ = "0.1.0"

__all__ = [
    "BundleInvalid", "CheckReport", "EnvironmentRefused", "ExportError", "ExportParityError",
    "ExportResult", "ExportSpec", "InputValidationError", "Manifest", "ParityBundleError",
    "ParityFailure", "ServingRuntime", "SessionSettings", "SpecError", "Tolerance", "UsageError",
    "check", "export", "load", "verify",
]

_TRAINING_NAMES = {"export", "ExportSpec", "ExportResult"}


def __getattr__(name: str) -> Any:
    # Training names load paritybundle.training on first use, so serving never pays for torch.
    if name in _TRAINING_NAMES:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module 'paritybundle' has no attribute {name!r}")
