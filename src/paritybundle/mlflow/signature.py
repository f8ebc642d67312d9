"""An MLflow model signature from a bundle's tensor specs."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bundle.manifest import Manifest, TensorSpec


def signature_of(manifest: Manifest) -> Any:
    """Columns for a bundle of 1-D inputs (a row per sample, as a DataFrame has them); tensors otherwise."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema
    from mlflow.types.schema import TensorSpec as MlflowTensor

    def tensor(spec: TensorSpec) -> Any:
        shape = tuple(-1 if not isinstance(d, int) else d for d in spec.shape)
        dtype = np.dtype(object) if spec.dtype == "string" else np.dtype(spec.dtype)
        return MlflowTensor(dtype, shape, spec.name)

    if all(len(s.shape) == 1 for s in manifest.inputs):
        kinds = {
            "string": "string",
            "bool": "boolean",
            "float32": "float",
            "float64": "double",
            "int32": "integer",
            "int64": "long",
        }
        if all(s.dtype in kinds for s in manifest.inputs):
            inputs = Schema([ColSpec(kinds[s.dtype], s.name) for s in manifest.inputs])
            return ModelSignature(inputs=inputs, outputs=Schema([tensor(s) for s in manifest.outputs]))
    if len(manifest.inputs) == 1:
        # Unnamed, so that MLflow hands a DataFrame of the input's features over as one array.
        spec = manifest.inputs[0]
        single = MlflowTensor(
            np.dtype(object) if spec.dtype == "string" else np.dtype(spec.dtype),
            tuple(-1 if not isinstance(d, int) else d for d in spec.shape),
        )
        return ModelSignature(inputs=Schema([single]), outputs=Schema([tensor(s) for s in manifest.outputs]))
    return ModelSignature(
        inputs=Schema([tensor(s) for s in manifest.inputs]), outputs=Schema([tensor(s) for s in manifest.outputs])
    )
