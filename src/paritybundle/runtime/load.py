"""A verified bundle loaded for serving: :func:`load` -> :class:`ServingRuntime`.

Order matters: nothing in a bundle is used before its manifest validated and every
file matched its hash. The pipeline's ONNX Runtime session is created while the files
hash, and handed over only once they matched; a signed bundle's files are all verified
before ONNX Runtime opens any of them (see :func:`~paritybundle.bundle.store.open_bundle_loading`).
The drift policy is applied once the lock (one of those files) is verified, before
anything is run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle.external_data import check_external_data, load_graph
from ..bundle.manifest import Manifest
from ..bundle.store import VerifiedBundle, open_bundle_loading
from ..errors import BundleInvalid
from . import drift as _drift
from . import lock as _lock
from .drift import DEFAULT_POLICY, DriftReport
from .index_bounds import index_bounds
from .runner import DEFAULT_BATCH_SIZE, Runner
from .session import SessionOverrides, SessionSettings, create_session, session_settings
from .validation import from_columns

Settings = SessionSettings | SessionOverrides | None


@dataclass
class ServingRuntime:
    """A verified bundle with its pipeline loaded in ONNX Runtime.

    Example:
        >>> rt = paritybundle.load("artifacts/digits")  # doctest: +SKIP
        >>> rt.predict(x)["logits"].shape  # doctest: +SKIP
        (5, 10)
    """

    bundle: VerifiedBundle
    settings: SessionSettings
    runner: Runner
    drift: DriftReport

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def predict(
        self, inputs: Mapping[str, Any] | np.ndarray | Any, *, batch_size: int | None = DEFAULT_BATCH_SIZE
    ) -> dict[str, np.ndarray]:
        """Run raw inputs through the pipeline; returns output name -> array.

        ``inputs``: a mapping input name -> array, one array for a single-input model, or a pandas
        DataFrame (one column per input); 1-D columns are accepted for ``[batch, 1]`` inputs.

        Raises:
            InputValidationError: inputs that do not match the bundle's input specs.
        """
        return self.runner.run(self.runner.validate(from_columns(self.manifest.inputs, inputs)), batch_size)


def load(
    path: str | os.PathLike[str],
    settings: Settings = None,
    env_policy: str = DEFAULT_POLICY,
    public_key: str | os.PathLike[str] | None = None,
) -> ServingRuntime:
    """Verify a bundle, apply the drift policy, and load its pipeline into ONNX Runtime.

    Args:
        path: the bundle directory (or archive).
        settings: session settings in full, or :class:`SessionOverrides` of the ones the
            export was validated with (the default).
        env_policy: ``strict`` (refuse critical drift), ``warn`` or ``ignore``.
        public_key: require ``bundle.sig`` to verify with this key.

    Returns:
        A :class:`ServingRuntime` with ``.predict(inputs)``.

    Raises:
        UsageError: the path does not exist, or an unknown policy (before anything is hashed).
        BundleInvalid: the bundle fails integrity or cannot be loaded.
        EnvironmentRefused: critical drift under the strict policy.
    """

    def open_pipeline(bundle: VerifiedBundle) -> tuple[SessionSettings, Runner, _lock.EnvironmentLock]:
        chosen = session_settings(bundle.manifest, settings)
        # Reading this environment needs nothing from the bundle: it too runs while the files hash.
        return chosen, pipeline_runner(bundle, chosen), _lock.capture(with_closure=False)

    _drift.check_policy(env_policy)  # a typo costs no hashing and no session
    bundle, (chosen, runner, here) = open_bundle_loading(path, public_key, open_pipeline)
    drift = environment_drift(bundle, env_policy, list(chosen.providers), here)
    return ServingRuntime(bundle=bundle, settings=chosen, drift=drift, runner=runner)


def load_verified(
    bundle: VerifiedBundle, settings: Settings = None, env_policy: str = DEFAULT_POLICY
) -> ServingRuntime:
    """:func:`load` for a bundle already opened with :func:`~paritybundle.bundle.store.open_bundle`:
    its files are not hashed a second time."""
    chosen = session_settings(bundle.manifest, settings)
    drift = environment_drift(bundle, env_policy, list(chosen.providers))
    return ServingRuntime(bundle=bundle, settings=chosen, drift=drift, runner=pipeline_runner(bundle, chosen))


def read_lock(bundle: VerifiedBundle) -> _lock.EnvironmentLock:
    """The bundle's environment lock (verified bytes, strictly parsed)."""
    relative = bundle.manifest.environment_lock
    return _lock.parse_lock(bundle.path(relative).read_bytes(), source=relative)


def environment_drift(
    bundle: VerifiedBundle, policy: str, providers: list[str], here: _lock.EnvironmentLock | None = None
) -> DriftReport:
    """Compare this environment (``here``, captured now if not given) with the bundle's lock and
    judge it under ``policy``.

    Raises:
        EnvironmentRefused: critical drift under the strict policy.
    """
    here = _lock.capture(with_closure=False) if here is None else here
    return _drift.apply_policy(_drift.diff_environments(read_lock(bundle), here, providers), policy)


def stage_runner(bundle: VerifiedBundle, file: str, inputs: list, outputs: list, settings: SessionSettings) -> Runner:
    """One graph of a verified bundle in an ONNX Runtime session (its external data confined to the bundle first)."""
    check_external_data(file, bundle.root, set(bundle.manifest.files))
    return Runner(create_session(bundle.path(file), settings, label=file), list(inputs), list(outputs))


def pipeline_runner(bundle: VerifiedBundle, settings: SessionSettings) -> Runner:
    """The bundle's pipeline in an ONNX Runtime session, its inputs and outputs as the manifest declares."""
    manifest = bundle.manifest
    runner = stage_runner(bundle, manifest.stages.pipeline, manifest.inputs, manifest.outputs, settings)
    graph_inputs = [i.name for i in runner.session.get_inputs()]
    graph_outputs = [o.name for o in runner.session.get_outputs()]
    declared_in, declared_out = [s.name for s in manifest.inputs], [s.name for s in manifest.outputs]
    if sorted(graph_inputs) != sorted(declared_in) or not set(declared_out) <= set(graph_outputs):
        raise BundleInvalid(
            f"{manifest.stages.pipeline} has inputs {graph_inputs} and outputs {graph_outputs}, but the manifest "
            f"declares {declared_in} -> {declared_out}; re-export the bundle."
        )
    integer_inputs = [s.name for s in manifest.inputs if s.dtype.startswith(("int", "uint"))]
    if integer_inputs:  # only then is the graph read a second time (weights not loaded)
        graph = load_graph(bundle.path(manifest.stages.pipeline), manifest.stages.pipeline)
        runner.bounds = index_bounds(graph, integer_inputs)
    return runner


def bundle_drift(bundle: VerifiedBundle, policy: str = DEFAULT_POLICY) -> DriftReport:
    """This environment's drift from a verified bundle's lock, judged for the providers it was validated with
    (``bundle env diff``).

    Raises:
        EnvironmentRefused: critical drift under the strict policy.
    """
    from .session import recorded_settings

    return environment_drift(bundle, policy, list(recorded_settings(bundle.manifest).providers))
