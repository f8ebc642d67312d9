"""Reference arrays: ``.npz`` files, written and read without pickle, ever."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import BundleInvalid


def to_storable(array: np.ndarray) -> np.ndarray:
    """Arrays as ``np.savez`` can store them without pickle (object strings -> unicode)."""
    array = np.asarray(array)
    if array.dtype.kind == "O":
        return array.astype(str)
    return np.ascontiguousarray(array)


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write named arrays to ``path`` as an uncompressed ``.npz`` (fast to read back)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{name: to_storable(a) for name, a in arrays.items()})
    path.write_bytes(buffer.getvalue())


def load_arrays(path: Path, expected: list[str], *, label: str) -> dict[str, np.ndarray]:
    """Read named arrays from an ``.npz``; pickled content is refused.

    Args:
        path: the ``.npz`` file.
        expected: the names that must be present (and no others).
        label: the file's name in the bundle, for messages.

    Raises:
        BundleInvalid: unreadable, truncated, pickled, or names that differ from ``expected``.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if sorted(names) != sorted(expected):
                raise BundleInvalid(
                    f"{label} holds arrays {sorted(names)} but the manifest declares {sorted(expected)}; "
                    "re-export the bundle."
                )
            return {name: archive[name] for name in expected}
    except BundleInvalid:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise BundleInvalid(f"{label} contains pickled objects, which paritybundle never loads; re-export the bundle.") from None
        raise BundleInvalid(f"{label} cannot be read as a numpy .npz ({exc}); re-export the bundle.") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise BundleInvalid(f"{label} is truncated or not a numpy .npz ({exc}); re-export the bundle.") from None
    except Exception as exc:
        # numpy parses each .npy header with ast.literal_eval: a corrupt header raises SyntaxError,
        # tokenize.TokenError or MemoryError (found by tests/test_hostile.py). All mean the same here.
        raise BundleInvalid(f"{label} has a corrupt array header ({type(exc).__name__}); re-export the bundle.") from None
