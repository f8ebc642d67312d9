"""``bundle export SPEC --references-from CAPTURE``: the next bundle's reference rows from production.

The proof follows the data: the raw inputs production received (``bundle serve --capture``)
replace the spec's ``reference_inputs`` as the pool the reference set is chosen from, with the
verdict's coverage rules (every predicted class, category, NaN column and extreme, then a seeded
random rest). The research outputs are computed on them by the spec's own research path, as
for any export. The capture's inputs are read with the manifest its server recorded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..bundle.manifest import parse_manifest
from ..errors import UsageError
from ..runtime.capture import capture_files, embedded_manifest, read_capture
from .inputs import is_tensor_like
from .spec import ExportSpec


def with_references_from(spec: ExportSpec, capture: str | os.PathLike[str]) -> ExportSpec:
    """``spec`` whose reference inputs are the captured traffic's, in the layout the spec gave its own
    (a mapping, a tuple in the bundle's input order, or a single array), one group per shape.

    Raises:
        UsageError: no capture, pyarrow missing, no samples, or a capture of other inputs than the spec's.
    """
    files = capture_files(capture)
    raw, _ = embedded_manifest(files[-1])
    manifest = parse_manifest(raw, source=f"the manifest recorded in {files[-1]}")
    data = read_capture(capture, manifest, outputs=False)
    if not data.samples:
        raise UsageError(f"{capture} holds no captured samples to draw reference rows from.")
    names = [s.name for s in manifest.inputs]
    groups = [_layout(spec.reference_inputs, names, {n: _plain(g.inputs[n]) for n in names}) for g in data.groups]
    return dataclasses.replace(spec, reference_inputs=groups[0] if len(groups) == 1 else groups)


def _plain(values: np.ndarray) -> np.ndarray:
    """Captured strings come back as Python objects; references hold them as numpy text."""
    return values.astype(str) if values.dtype == object else values


def _layout(original: Any, names: list[str], arrays: Mapping[str, np.ndarray]) -> Any:
    """The captured arrays in the layout the spec's own reference inputs had (one group of it)."""
    sample = original[0] if isinstance(original, list) and original and not is_tensor_like(original) else original
    if isinstance(sample, tuple):
        return tuple(arrays[n] for n in names)
    if is_tensor_like(sample) and len(names) == 1:
        return arrays[names[0]]
    return dict(arrays)
