"""Private working directories (mode 0700, removed at exit) for untrusted bundles.

An archive is unpacked into one, and a signed bundle directory is verified into one: only this
process's user can write there, so what was verified stays what is used.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_made: list[Path] = []


def private_directory(prefix: str) -> Path:
    """A new directory only this user can enter (``mkdtemp`` makes it 0700), removed when the process exits."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    _made.append(directory)
    return directory


def is_private(path: Path) -> bool:
    """Whether ``path`` is (inside) a directory made by :func:`private_directory`."""
    resolved = path.resolve()
    return any(resolved == d or d in resolved.parents for d in _made)


def _cleanup() -> None:
    for directory in _made:
        shutil.rmtree(directory, ignore_errors=True)


atexit.register(_cleanup)
