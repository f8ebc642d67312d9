"""The longest sequence a model takes, found at export and enforced when serving.

A sequence model's graph takes a symbolic length (``["batch", "sequence"]``), but its position table
does not: a request one token past it reached ONNX Runtime, which answered with its raw error
("Attempting to broadcast an axis by a dimension other than 1. 64 by 65"), where research (torch's
``Embedding``) raised on the same input. Export finds the largest length the exported graph runs, by
running ONNX Runtime on one reference row tiled to longer and longer lengths (doubling from the
longest reference length up to :data:`SEARCH_CAP`, then bisecting), and records it per symbolic
dimension of the integer inputs (token ids, masks) in the manifest (``TensorSpec.max_dims``). The
serving side refuses a longer request with a 400 naming the maximum, and advertises it in the model's
metadata. A graph that takes every length up to the cap records no maximum.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..bundle.manifest import TensorSpec
from ..errors import InputValidationError
from ..runtime.runner import Runner

SEARCH_CAP = 4096


def sequence_dims(specs: list[TensorSpec]) -> dict[str, list[tuple[str, int]]]:
    """Symbolic dimension name -> ``(input, axis)`` for the non-batch symbolic axes of integer or bool inputs,
    when every input carrying that name is one (an image's height is not a sequence)."""
    found: dict[str, list[tuple[str, int]]] = {}
    others: set[str] = set()
    for spec in specs:
        for axis, dim in enumerate(spec.shape[1:], start=1):
            if isinstance(dim, str):
                if spec.dtype.startswith(("int", "uint")) or spec.dtype == "bool":
                    found.setdefault(dim, []).append((spec.name, axis))
                else:
                    others.add(dim)
    return {dim: places for dim, places in found.items() if dim not in others}


def find_max_lengths(runner: Runner, group: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Symbolic dimension -> the largest length ``runner``'s graph runs (only those with a limit below the cap).
    ``runner``'s session should be quiet: most of the lengths tried near the limit fail."""
    dims = sequence_dims(runner.inputs)
    if not dims:
        return {}
    row = {name: array[:1] for name, array in group.items()}
    limits = {}
    for dim, places in dims.items():
        shortest = max(row[name].shape[axis] for name, axis in places)
        if shortest < 1:
            continue

        def runs(length: int, places: list[tuple[str, int]] = places) -> bool:
            feed = dict(row)
            for name, axis in places:
                feed[name] = np.take(row[name], np.arange(length) % row[name].shape[axis], axis=axis)
            try:
                runner.run(runner.validate(feed, check_finite=False), None)
            except InputValidationError:  # ModelRunError too: ONNX Runtime refused this length
                return False
            return True

        good, bad = shortest, None
        length = shortest
        while bad is None and length < SEARCH_CAP:
            length = min(length * 2, SEARCH_CAP)
            if runs(length):
                good = length
            else:
                bad = length
        if bad is None:
            continue
        while bad - good > 1:
            middle = (good + bad) // 2
            good, bad = (middle, bad) if runs(middle) else (good, middle)
        limits[dim] = good
    return limits
