"""The ``python_function`` flavor of a bundle logged with :func:`paritybundle.mlflow.log_model`.

MLflow imports this module by name and calls ``_load_pyfunc(data_path)``. The bundle is opened
through the same gate as ``bundle serve``: every file's hash, the environment's drift policy
(``PARITYBUNDLE_MLFLOW_ENV_POLICY``, default ``strict``) and the reference check; a bundle that
fails any of them fails to load, with the sentence ``bundle check`` would print. So
``mlflow models serve`` answers only after parity holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..check.checks import check_runtime
from ..errors import ParityFailure
from ..parity.explain import explain_failure
from ..runtime.load import ServingRuntime, load


def _load_pyfunc(data_path: str) -> BundleModel:
    return BundleModel(Path(data_path))


class BundleModel:
    """A verified, parity-checked bundle with MLflow's ``predict``."""

    def __init__(self, root: Path) -> None:
        self.runtime: ServingRuntime = load(root, None, os.environ.get("PARITYBUNDLE_MLFLOW_ENV_POLICY", "strict"))
        report = check_runtime(self.runtime)
        if not report.passed:
            raise ParityFailure(
                "parity fails, so this model will not load: "
                + " ".join(explain_failure(o) for o in report.outputs if not o.passed)
            )
        self.report = report

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DataFrame (a column per input, or the features of a single ``[batch, F]`` input), a mapping of
        input name to array, or one array; returns output name -> array."""
        return self.runtime.predict(model_input)
