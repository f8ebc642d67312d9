"""Writing what export validated, and the manifest that lists it: reference arrays, the
environment lock and serving pins, provenance (git, library versions), ``bundle.json``."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.layout import (
    FEATURES_FILE,
    INPUTS_FILE,
    LOCK_FILE,
    MODEL_FILE,
    OUTPUTS_FILE,
    PIPELINE_FILE,
    PREPROCESS_FILE,
    REQUIREMENTS_FILE,
    group_files,
)
from ..bundle.manifest import (
    FORMAT_VERSION,
    Coverage,
    GitInfo,
    Manifest,
    OutputError,
    Power,
    Preprocessing,
    Producer,
    Provenance,
    ReferenceGroup,
    ReferenceSet,
    RuntimeSettings,
    Stages,
    TensorSpec,
    TolerancePolicy,
)
from ..bundle.references import ArrayStream, save_arrays
from ..bundle.writer import BundleWriter
from ..parity.results import OutputComparison
from ..runtime import lock as environment
from ..runtime.session import SessionSettings, onnxruntime_version


def write_reference_set(
    writer: BundleWriter,
    groups: Sequence[Mapping[str, np.ndarray]],
    research: Sequence[Mapping[str, np.ndarray]],
    features: Sequence[Mapping[str, np.ndarray]] | None,
) -> None:
    """The reference arrays, group by group (:func:`~paritybundle.bundle.layout.group_files`), read back:
    a reference set that cannot round-trip must not ship."""
    for index, (inputs, outputs) in enumerate(zip(groups, research, strict=True)):
        inputs_file, features_file, outputs_file = group_files(index)
        save_arrays(writer.path(inputs_file), inputs)
        if features is not None:
            save_arrays(writer.path(features_file), features[index])
        save_arrays(writer.path(outputs_file), outputs)
        ArrayStream(writer.path(inputs_file), list(inputs), label=inputs_file).read_all()


def reference_set(
    groups: Sequence[Mapping[str, np.ndarray]], *, staged: bool, device: str, precision: str
) -> ReferenceSet:
    """The manifest's reference section for what :func:`write_reference_set` wrote."""
    samples = [len(next(iter(g.values()))) for g in groups]
    listed = []
    if len(groups) > 1:
        for index, (group, count) in enumerate(zip(groups, samples, strict=True)):
            inputs_file, features_file, outputs_file = group_files(index)
            listed.append(
                ReferenceGroup(
                    inputs=inputs_file,
                    outputs=outputs_file,
                    features=features_file if staged else None,
                    samples=count,
                    shapes={name: [int(d) for d in a.shape[1:]] for name, a in group.items()},
                )
            )
    return ReferenceSet(
        inputs=INPUTS_FILE,
        outputs=OUTPUTS_FILE,
        features=FEATURES_FILE if staged else None,
        samples=sum(samples),
        device=device,
        precision=precision,
        groups=listed,
    )


def write_environment(
    writer: BundleWriter,
    torch_info: environment.TorchInfo | None,
    providers: Sequence[str] = (),
    custom_ops: Sequence[str] = (),
) -> None:
    """The environment lock of this (training) process, and the serving pins derived from it (for the
    execution ``providers`` export validated with, and the ``custom_ops`` packages its graphs need)."""
    lock = environment.capture(torch_info, extra_roots=tuple(custom_ops))
    writer.write_bytes(LOCK_FILE, lock.to_json().encode())
    writer.write_bytes(REQUIREMENTS_FILE, environment.serve_requirements_text(lock, tuple(providers)).encode())


def assemble_manifest(
    writer: BundleWriter,
    spec: Any,
    *,
    input_specs: list[TensorSpec],
    output_specs: list[TensorSpec],
    opset: int,
    exporter: str,
    policy: TolerancePolicy,
    settings: SessionSettings,
    groups: Sequence[Mapping[str, np.ndarray]],
    reference_device: str,
    reference_precision: str,
    comparisons: list[OutputComparison],
    preprocessing: Preprocessing | None,
    power: Power | None = None,
    coverage: Coverage | None = None,
) -> Manifest:
    """``bundle.json`` for everything staged in ``writer`` (hashed now, so call it last)."""
    staged = preprocessing is not None
    return Manifest(
        format_version=FORMAT_VERSION,
        name=spec.name,
        version=spec.version,
        created_at=datetime.now(timezone.utc),
        producer=Producer(version=_version("paritybundle"), libraries=_library_versions()),
        provenance=Provenance(
            git=_git_info(spec.source_path),
            params=dict(spec.params),
            metrics={k: float(v) for k, v in spec.metrics.items()},
            data_hashes=dict(spec.data_hashes),
        ),
        inputs=input_specs,
        outputs=output_specs,
        stages=Stages(
            pipeline=PIPELINE_FILE,
            model=MODEL_FILE,
            preprocess=PREPROCESS_FILE if staged else None,
            opset=opset,
            exporter=exporter,
        ),
        tolerance=policy,
        runtime=RuntimeSettings(
            onnxruntime_version=onnxruntime_version(),
            providers=list(settings.providers),
            graph_optimization_level=settings.graph_optimization_level,  # type: ignore[arg-type]
            intra_op_num_threads=settings.intra_op_num_threads,
            custom_ops=list(settings.custom_ops),  # type: ignore[arg-type]
        ),
        reference=reference_set(groups, staged=staged, device=reference_device, precision=reference_precision),
        export_errors={
            c.name: OutputError(max_abs=c.stats.max_abs, mean_abs=c.stats.mean_abs, max_rel=c.stats.max_rel)
            for c in comparisons
            if c.stats is not None
        },
        preprocessing=preprocessing,
        power=power,
        coverage=coverage,
        environment_lock=LOCK_FILE,
        serve_requirements=REQUIREMENTS_FILE,
        files=writer.digests(),
    )


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _library_versions() -> dict[str, str]:
    return {name: _version(name) for name in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "pydantic")}


def _git_info(source_path: str | None) -> GitInfo | None:
    """Commit and dirty flag of the git checkout holding the training code, if any."""
    where = Path(source_path).resolve().parent if source_path else Path.cwd()
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return GitInfo(commit=commit.stdout.strip(), dirty=bool(status.stdout.strip()))
