"""``bundle pack``: a verified bundle as one ``.tar.gz`` (reading archives: :mod:`paritybundle.bundle.archive`)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from ..bundle.archive import ARCHIVE_SUFFIXES, write_archive
from ..bundle.store import open_bundle
from ..bundle.writer import remove_stale_staging
from ..errors import BundleExistsError, UsageError


def pack(bundle: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write a verified bundle directory as one ``.tar.gz`` (atomically; manifest first).

    Members are written in a fixed order with fixed owners, modes and times, so the
    same bundle always packs to the same archive content.

    Raises:
        BundleInvalid: the bundle fails verification (nothing is written).
        BundleExistsError: ``out`` exists and ``force`` is false.
    """
    verified = open_bundle(bundle)
    out = Path(out)
    if out.exists() and not force:
        raise BundleExistsError(f"{out} already exists; pass --force to replace it.")
    if not out.name.endswith(ARCHIVE_SUFFIXES):
        raise UsageError(f"{out} must end in .tar.gz or .tgz.")
    if out.exists() and not out.is_file():
        raise UsageError(f"{out} exists and is not a file; choose another path for the archive.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out.parent, out.name)
        handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a later run sees this writer alive
    except OSError as exc:
        raise UsageError(f"cannot write {out} ({exc.strerror}); choose a writable path.") from None
    try:
        with os.fdopen(handle, "wb") as raw:
            write_archive(verified, raw)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out
