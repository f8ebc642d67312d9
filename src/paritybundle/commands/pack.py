"""``bundle pack``: a verified bundle as one ``.tar.gz`` (reading archives: :mod:`paritybundle.bundle.archive`)."""

from __future__ import annotations

import gzip
import os
import tarfile
import tempfile
from pathlib import Path

from ..bundle.archive import ARCHIVE_SUFFIXES
from ..bundle.layout import MANIFEST_NAME, SIGNATURE_NAME
from ..bundle.store import open_bundle
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
    mtime = int(verified.manifest.created_at.timestamp())
    names = [MANIFEST_NAME] + ([n for n in (SIGNATURE_NAME,) if (verified.root / n).is_file()])
    names += sorted(verified.manifest.files)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as compressed:
                with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for name in names:
                        info = tarfile.TarInfo(name)
                        info.size = (verified.root / name).stat().st_size
                        info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = mtime, 0o644, 0, 0, "", ""
                        with open(verified.root / name, "rb") as source:
                            tar.addfile(info, source)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out
