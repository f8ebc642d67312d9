"""ONNX Runtime sessions, and the one place their settings are decided.

A session's settings come from the manifest (what the export was validated with), and a
caller may override some of them (``--threads``, ``--optimization``, ``--provider``):
:func:`session_settings` merges the two, for check, serve and every later command.
Building a session (:func:`create_session`) is separate from running it
(:class:`~paritybundle.runtime.runner.Runner`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..bundle.manifest import MAX_THREADS, Manifest
from ..errors import BundleInvalid, ExportError, UsageError

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

_ONNX_ELEM_TO_NUMPY = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
}


def numpy_dtype_of_onnx(elem_type: int) -> str:
    """The numpy dtype name of an ONNX TensorProto element type."""
    try:
        return _ONNX_ELEM_TO_NUMPY[elem_type]
    except KeyError:
        raise UsageError(f"ONNX element type {elem_type} is not supported by paritybundle bundles.") from None


@dataclass(frozen=True)
class SessionSettings:
    """How an ONNX Runtime session is built; every field is recorded in reports."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    graph_optimization_level: str = "all"
    # 0 lets ONNX Runtime choose (one thread per physical core).
    intra_op_num_threads: int = 0
    # ONNX Runtime's idle intra-op threads spin for work by default. paritybundle always has
    # other work right after a run (comparing, answering HTTP), and spinning threads take
    # the cores it needs: on 2 cores, serving went 3.2k -> 7.9k req/s with spinning off, and
    # check under CPU contention 1.13-1.25x -> 0.98-1.01x of a bare loop (no change when the
    # machine is quiet). Numerics do not depend on it.
    allow_spinning: bool = False
    # Custom-operator libraries registered in every session (the manifest's runtime.custom_ops).
    custom_ops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise UsageError(
                f"graph optimization level {self.graph_optimization_level!r} is not one of "
                f"{', '.join(GRAPH_OPTIMIZATION_LEVELS)}."
            )
        if not 0 <= self.intra_op_num_threads <= MAX_THREADS:
            raise UsageError(f"the intra-op thread count must be 0 (automatic) to {MAX_THREADS}.")


@dataclass(frozen=True)
class SessionOverrides:
    """Settings a caller changes for one run; ``None`` keeps what the bundle was validated with."""

    providers: tuple[str, ...] | None = None
    graph_optimization_level: str | None = None
    intra_op_num_threads: int | None = None

    def apply(self, recorded: SessionSettings) -> SessionSettings:
        """``recorded`` with these overrides applied (validated as any SessionSettings)."""
        changes: dict[str, Any] = {
            name: value
            for name, value in (
                ("providers", tuple(self.providers) if self.providers else None),
                ("graph_optimization_level", self.graph_optimization_level),
                ("intra_op_num_threads", self.intra_op_num_threads),
            )
            if value is not None
        }
        return replace(recorded, **changes)


def recorded_settings(manifest: Manifest) -> SessionSettings:
    """The settings the export was validated with, as the manifest records them."""
    return SessionSettings(
        providers=tuple(manifest.runtime.providers),
        graph_optimization_level=manifest.runtime.graph_optimization_level,
        intra_op_num_threads=manifest.runtime.intra_op_num_threads,
        custom_ops=tuple(manifest.runtime.custom_ops),
    )


def session_settings(manifest: Manifest, chosen: SessionSettings | SessionOverrides | None = None) -> SessionSettings:
    """The settings to run a bundle with: ``chosen`` in full, or the recorded ones with ``chosen``'s overrides.

    Example:
        >>> session_settings(manifest, SessionOverrides(intra_op_num_threads=1))  # doctest: +SKIP
        SessionSettings(providers=('CPUExecutionProvider',), graph_optimization_level='all', intra_op_num_threads=1, ...)
    """
    if isinstance(chosen, SessionSettings):
        return chosen
    recorded = recorded_settings(manifest)
    return recorded if chosen is None else chosen.apply(recorded)


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def create_session(
    model_path: Path | bytes,
    settings: SessionSettings,
    *,
    label: str | None = None,
    at_export: bool = False,
    quiet: bool = False,
) -> Any:
    """Build an ONNX Runtime session for a verified model file (or a serialised model in memory).

    ``at_export``: the graph was just made (export's validation): a failure is the export's, not a
    bundle's, and "re-export" would be no advice. ``quiet``: runs are expected to fail (export probing
    the longest input), so ONNX Runtime logs nothing but fatal errors.

    Raises:
        UsageError: an execution provider that this onnxruntime does not have.
        BundleInvalid: ONNX Runtime cannot load the model (its reason, and what to do, included).
        ExportError: the same, at export (nothing is written).
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    for provider in settings.providers:
        if provider not in available:
            raise UsageError(
                f"execution provider {provider} is not available in this onnxruntime "
                f"(available: {', '.join(available)}); install the matching onnxruntime build or choose another."
            )
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.graph_optimization_level]
    options.intra_op_num_threads = settings.intra_op_num_threads
    if not settings.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 4 if quiet else 3  # errors only: ORT's warnings are not the user's business here
    for library in settings.custom_ops:
        options.register_custom_ops_library(custom_op_library(library))
    try:
        source = model_path if isinstance(model_path, bytes) else os.fspath(model_path)
        return ort.InferenceSession(source, sess_options=options, providers=list(settings.providers))
    except Exception as exc:  # ORT raises its own pybind classes; all mean "cannot load this model"
        reason = " ".join(str(exc).split())[:600]
        what = label or getattr(model_path, "name", "the model")
        advice = load_advice(reason)
        if at_export:
            raise ExportError(
                f"ONNX Runtime cannot load {what} in the training environment: {reason}; "
                f"{advice or 'the graph the exporter made is not one this onnxruntime runs'}. "
                "Nothing was written."
            ) from None
        raise BundleInvalid(f"ONNX Runtime cannot load {what}: {reason}; {advice or 're-export the bundle'}.") from None


def custom_op_library(distribution: str) -> str:
    """The shared library of a custom-operator package, found without importing the package:
    ``import onnxruntime_extensions`` imports torch and transformers where they are installed, which
    the serving side never does.

    Raises:
        UsageError: the package is not installed here (what to install, named).
    """
    import sys

    if distribution != "onnxruntime-extensions":
        raise BundleInvalid(
            f"the bundle needs custom operators from {distribution!r}, which paritybundle does not know; re-export it."
        )
    # Looked up on sys.path as the import system would, without its machinery (nothing is imported).
    libraries = [
        library
        for entry in sys.path
        for library in sorted((Path(entry or ".") / "onnxruntime_extensions").glob("_extensions_pydll*"))
        if library.suffix in (".so", ".pyd", ".dylib")
    ]
    if not libraries:
        raise UsageError(
            "this bundle's frozen tokenizer runs on onnxruntime-extensions' operators, which are not "
            "installed here; install the version its requirements-serve.txt pins "
            "(pip install -r BUNDLE/requirements-serve.txt)."
        )
    return str(libraries[0])


def load_advice(reason: str) -> str | None:
    """What to do about an ONNX Runtime load failure whose cause is this machine, not the model file."""
    lowered = reason.lower()
    if "no op registered" in lowered or "not a registered function/op" in lowered or "ai.onnx.contrib" in lowered:
        return (
            "the graph uses an operator this onnxruntime does not register (a custom op, such as "
            "onnxruntime-extensions' ai.onnx.contrib domain): install the package that provides it here "
            "(pip install onnxruntime-extensions), or convert without it"
        )
    if "locale" in lowered:
        return (
            "the graph needs a locale this machine does not have (scikit-learn's TF-IDF lowercasing, "
            "StringNormalizer): install it (apt-get install locales, then locale-gen en_US.UTF-8) or set the "
            "converter's locale option to one installed (locale -a lists them)"
        )
    return None
