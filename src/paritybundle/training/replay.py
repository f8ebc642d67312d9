"""``bundle replay SPEC CAPTURE``: the research path run again on what production received.

Where training runs (torch is needed): the export spec (``file.py:name``) rebuilds the research
model and its preprocessing exactly as ``bundle export`` used them; the research path (the
preprocessing's numpy or scikit-learn code, then the torch model) runs on the captured raw
inputs, and its outputs are judged against what production served under the bundle's
tolerance policy. Same verdict, exit codes and report shape as ``bundle check``, with the
requests that failed.

The bundle whose policy judges is ``--bundle`` (verified), or else the manifest the server
recorded in the capture files themselves.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import Manifest, Tolerance, parse_manifest
from ..bundle.store import VerifiedBundle, open_bundle
from ..check.results import CheckReport
from ..check.traffic import TolerancesByOutput, compare_replay
from ..errors import SpecError, UsageError
from ..runtime.capture import CaptureData, capture_files, embedded_manifest, read_capture
from . import _torch, calling
from .inputs import output_names, raw_groups
from .spec import ExportSpec, load_spec


def replay(
    spec: ExportSpec | str,
    capture: str | os.PathLike[str],
    *,
    bundle: str | os.PathLike[str] | None = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: TolerancesByOutput = None,
    public_key: str | os.PathLike[str] | None = None,
    histograms: bool = False,
) -> CheckReport:
    """Research (rebuilt from ``spec``) on the captured inputs, against what production served.

    Raises:
        SpecError: the spec cannot be loaded, or its model is an ``.onnx`` file (no research path to run).
        UsageError: no capture, pyarrow missing, or a capture of other inputs or outputs.
        BundleInvalid: ``bundle`` fails verification.
    """
    started = time.perf_counter()
    spec = load_spec(spec) if isinstance(spec, str) else spec
    verified, notices = judging_bundle(capture, bundle, public_key)
    data = read_capture(capture, verified.manifest)
    if not data.samples:
        raise UsageError(f"{capture} holds no captured samples; let the server answer some requests first.")
    research = research_outputs(spec, data, verified.manifest)
    report = compare_replay(
        verified,
        data,
        research,
        tolerance=tolerance,
        per_output_tolerance=per_output_tolerance,
        capture=str(capture),
        histograms=histograms,
        started=started,
    )
    update: dict[str, Any] = {"notices": notices + report.notices}
    if bundle is None:
        update["bundle"] = report.bundle.model_copy(update={"files_verified": 0})
    return report.model_copy(update=update)


def research_outputs(spec: ExportSpec, data: CaptureData, manifest: Manifest) -> list[dict[str, np.ndarray]]:
    """The research path's outputs for each group of captured inputs, named as the bundle's outputs."""
    model = spec.model
    if isinstance(model, (str, os.PathLike)):
        raise SpecError(
            "the export spec's model is an .onnx file: there is no research path to replay; replay needs "
            "the spec of a torch model."
        )
    _torch.require_module(model)
    preprocessor = None
    if spec.preprocess is not None:
        from .preprocessing.adapt import as_preprocessor

        preprocessor = as_preprocessor(spec.preprocess, [s.name for s in manifest.inputs], spec)
    # Without preprocessing the model reads the raw inputs as export called it (forward's signature).
    convention = calling.convention_for(model, raw_groups(spec)[0], spec.input_names) if preprocessor is None else None
    device = _torch.model_device(model)
    expected = [s.name for s in manifest.outputs]
    results = []
    with _torch.eval_mode(model):
        plan = None
        for group in data.groups:
            features = dict(group.inputs)
            if preprocessor is not None:
                features = {
                    name: np.ascontiguousarray(np.asarray(value))
                    for name, value in preprocessor.research(preprocessor.prepare_raw(features)).items()
                }
            if plan is None:
                if preprocessor is not None:
                    convention = calling.features_convention(model, preprocessor, features)
                plan = _torch.plan_outputs(model, features, device, convention)
            names = output_names(spec, list(plan.names))
            if sorted(names) != sorted(expected):
                raise SpecError(
                    f"the spec's model returns {', '.join(names)}, but the bundle's outputs are "
                    f"{', '.join(expected)}: it is not the spec this bundle was exported from."
                )
            results.append(dict(zip(names, _torch.run_model(model, features, device, convention, plan), strict=True)))
    return results


def judging_bundle(
    capture: str | os.PathLike[str], bundle: str | os.PathLike[str] | None, public_key: str | os.PathLike[str] | None
) -> tuple[VerifiedBundle, list[str]]:
    """The bundle whose policy judges: ``bundle`` verified, or the manifest recorded in the capture."""
    files = capture_files(capture)
    if bundle is not None:
        verified = open_bundle(bundle, public_key)
        digest = verified.manifest_sha256()
        recorded = {embedded_manifest(f)[1] for f in files}
        notices = []
        if recorded - {digest}:
            notices.append(
                f"the capture was served by another bundle.json than {bundle}'s (sha256 "
                f"{', '.join(sorted(d[:12] for d in recorded - {digest}))}); it is judged under {bundle}'s policy."
            )
        return verified, notices
    raw, _ = embedded_manifest(files[-1])
    manifest = parse_manifest(raw, source=f"the manifest recorded in {files[-1]}")
    return VerifiedBundle(root=Path(capture), manifest=manifest, source=Path(capture)), [
        "judged under the manifest the server recorded in the capture (pass --bundle to verify the bundle itself)."
    ]
