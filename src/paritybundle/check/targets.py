"""Targets for the comparison loop (:mod:`.engine`): things that compute outputs from inputs.

* :class:`RunnerTarget`: a graph in a local ONNX Runtime session (the pipeline, or one stage).
* :class:`EndpointTarget`: a live V2 endpoint, through a client the caller passes in (the
  check layer never imports an HTTP client; ``paritybundle.serving.client.V2Client`` is one).

Any callable ``inputs -> outputs`` is a target too (``bundle diff`` passes another bundle's runner).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from ..bundle.manifest import Manifest
from ..errors import InputValidationError
from ..runtime.runner import Runner
from .engine import Arrays


class RunnerTarget:
    """Validate rows against a runner's input specs, then run them ``batch_size`` samples per call.

    Args:
        runner: the session and its specs.
        batch_size: samples per ONNX Runtime call (None: all at once).
        refuse: turns an :class:`InputValidationError` (a spec rule, or ONNX Runtime failing on the
            rows) into the error this caller raises (the bundle's fault when the rows are its own
            verified references: exit 3).
        check_finite: scan for NaN/inf; off for hash-verified references, whose
            ``allow_nonfinite`` flags were derived from those very arrays.
    """

    def __init__(
        self,
        runner: Runner,
        batch_size: int | None,
        *,
        refuse: Callable[[InputValidationError], Exception] | None = None,
        check_finite: bool = False,
    ) -> None:
        self.runner, self.batch_size, self.refuse, self.check_finite = runner, batch_size, refuse, check_finite

    def __call__(self, inputs: Arrays) -> dict[str, np.ndarray]:
        try:
            return self.runner.run(self.runner.validate(inputs, check_finite=self.check_finite), self.batch_size)
        except InputValidationError as exc:  # a spec rule, or ONNX Runtime refusing the rows (ModelRunError)
            if self.refuse is None:
                raise
            raise self.refuse(exc) from None


class InferenceClient(Protocol):
    """What :class:`EndpointTarget` needs of a client (``V2Client`` is one)."""

    def check_model(self, name: str, manifest: Manifest) -> None: ...

    def infer_all(
        self, name: str, manifest: Manifest, inputs: Mapping[str, np.ndarray], batch: int
    ) -> dict[str, np.ndarray]: ...


class EndpointTarget:
    """A model on a live endpoint: rows go out ``request_batch`` samples per request.

    Raises (when called):
        EndpointError: unreachable, timed out, or an answer that is not this model's.
    """

    def __init__(self, client: InferenceClient, model: str, manifest: Manifest, request_batch: int) -> None:
        self.client, self.model, self.manifest, self.request_batch = client, model, manifest, request_batch

    def check_model(self) -> None:
        """The endpoint serves this model, ready, with the bundle's inputs and outputs."""
        self.client.check_model(self.model, self.manifest)

    def __call__(self, inputs: Arrays) -> dict[str, np.ndarray]:
        return self.client.infer_all(self.model, self.manifest, dict(inputs), self.request_batch)
