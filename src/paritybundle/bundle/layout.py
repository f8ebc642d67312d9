"""Where each file of a bundle lives (format 1): the names both sides agree on.

``bundle.json`` and ``bundle.sig`` are the only files a manifest does not list; every
other path here is listed in ``bundle.json``'s ``files`` map with its sha256.
"""

from __future__ import annotations

MANIFEST_NAME = "bundle.json"
SIGNATURE_NAME = "bundle.sig"
# Files that are never listed in the manifest's `files` map.
UNLISTED_FILES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
# A sigstore bundle of one signature is a few KiB.
MAX_SIGNATURE_BYTES = 1024 * 1024

PIPELINE_FILE = "pipeline.onnx"  # preprocess -> model, one graph: what serving runs
MODEL_FILE = "model.onnx"  # the model alone (input: features)
PREPROCESS_FILE = "preprocess.onnx"  # the frozen preprocessing alone (absent if none)
LOCK_FILE = "environment.lock.json"
REQUIREMENTS_FILE = "requirements-serve.txt"
INPUTS_FILE = "reference/inputs.npz"
FEATURES_FILE = "reference/features.npz"
OUTPUTS_FILE = "reference/outputs.npz"


def group_files(group: int) -> tuple[str, str, str]:
    """``(inputs, features, outputs)`` of reference group ``group``: the first group's are the files above."""
    if group == 0:
        return INPUTS_FILE, FEATURES_FILE, OUTPUTS_FILE
    folder = f"reference/group_{group}"
    return f"{folder}/inputs.npz", f"{folder}/features.npz", f"{folder}/outputs.npz"
