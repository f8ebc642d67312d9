"""paritybundle: what research trained is what production serves.

The pipeline, in the order it runs (the folders are the layers, each importing only
those below it; ``docs/architecture.md`` draws them):

1. Training side (``paritybundle.training``, the only code that imports torch):
   ``export(model, out, reference_inputs=...)`` puts the model in eval mode, computes
   the research outputs, exports ONNX, proves ONNX Runtime reproduces torch through the
   check engine (fail closed), and writes the bundle atomically: ``pipeline.onnx``,
   ``model.onnx``, the reference set, the environment lock, and ``bundle.json``.
2. Serving side: ``bundle`` (the format: ``verify(path)`` checks the manifest and every
   hash), ``parity`` (the maths of a verdict), ``runtime`` (``load(path)`` returns a
   runtime with ``predict``), ``check`` (``check(path)`` runs the reference set through
   the one comparison loop and returns a :class:`CheckReport`, truthy when parity holds),
   then ``reports``, ``serving`` (the V2 server) and ``commands`` above them.

Importing ``paritybundle`` never imports torch: ``export`` and ``ExportSpec`` are
resolved lazily from ``paritybundle.training`` on first use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from .bundle.manifest import ErrorBudget, Manifest, Tolerance
from .bundle.store import verify
from .check.checks import check as _check
from .check.results import CheckReport
from .errors import (
    BundleInvalid,
    EnvironmentRefused,
    ExportError,
    ExportParityError,
    InputValidationError,
    ParityBundleError,
    ParityFailure,
    SpecError,
    UsageError,
)
from .runtime.load import ServingRuntime, load
from .runtime.session import SessionOverrides, SessionSettings
from .version import __version__  # noqa: F401  (paritybundle.__version__)

if TYPE_CHECKING:
    from .training import ExportResult, ExportSpec, export


__all__ = [
    "BundleInvalid",
    "CheckReport",
    "EnvironmentRefused",
    "ErrorBudget",
    "ExportError",
    "ExportParityError",
    "ExportResult",
    "ExportSpec",
    "InputValidationError",
    "Manifest",
    "ParityBundleError",
    "ParityFailure",
    "ServingRuntime",
    "SessionOverrides",
    "SessionSettings",
    "SpecError",
    "Tolerance",
    "UsageError",
    "check",
    "export",
    "load",
    "verify",
]


@functools.wraps(_check)
def check(path: Any, *args: Any, mlflow_run: str | None = None, **kwargs: Any) -> CheckReport:
    report = _check(path, *args, **kwargs)
    if mlflow_run is not None:  # the verdict lands next to the training run (paritybundle.mlflow)
        from .mlflow import log_check

        log_check(report, mlflow_run)
    return report


check.__doc__ = (
    (_check.__doc__ or "")
    + """
    With ``mlflow_run=RUN_ID`` the report is also logged to that MLflow run (reports as artifacts,
    per-output metrics, the verdict as a tag); see :mod:`paritybundle.mlflow`.
"""
)

_TRAINING_NAMES = {"export", "ExportSpec", "ExportResult"}


def __getattr__(name: str) -> Any:
    # Training names load paritybundle.training on first use, so serving never pays for torch.
    if name in _TRAINING_NAMES:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module 'paritybundle' has no attribute {name!r}")
