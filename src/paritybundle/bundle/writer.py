"""Writing bundles atomically: :class:`BundleWriter`.

Files land in a temp directory beside the target, are flushed, and the directory is
renamed into place at the end, so a reader sees either no bundle or a complete one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import BundleExistsError, UsageError
from .layout import MANIFEST_NAME, UNLISTED_FILES
from .manifest import FileDigest, Manifest
from .store import list_files, sha256_file


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BundleWriter:
    """Writes a bundle into a temp directory beside ``target``; :meth:`commit` renames it in.

    Use as a context manager: leaving the block without :meth:`commit` (an
    exception) removes the temp directory, so a failed export leaves nothing.
    """

    def __init__(self, target: str | os.PathLike[str], *, force: bool = False) -> None:
        self.target = Path(target)
        self.force = force
        self._staging: Path | None = None

    def __enter__(self) -> BundleWriter:
        if self.target.exists() and not self.force:
            raise BundleExistsError(
                f"{self.target} already exists; pass --force (force=True) to replace it, or choose another path."
            )
        if self.target.exists() and (self.target.is_symlink() or not self.target.is_dir()):
            raise UsageError(f"{self.target} exists and is not a bundle directory; --force replaces a bundle, "
                             "choose another path.")
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=parent))
        except OSError as exc:
            raise UsageError(f"cannot write {self.target} ({exc.strerror}); choose a writable path.") from None
        # mkdtemp makes it 0700; a bundle is an artifact others read (a container's non-root user).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._staging, 0o777 & ~umask)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._staging is not None and self._staging.exists():
            shutil.rmtree(self._staging, ignore_errors=True)

    @property
    def staging(self) -> Path:
        assert self._staging is not None, "BundleWriter used outside its with-block"
        return self._staging

    def path(self, relative: str) -> Path:
        """Where to write ``relative`` inside the staging directory (parents created)."""
        full = self.staging / relative
        full.parent.mkdir(parents=True, exist_ok=True)
        return full

    def write_bytes(self, relative: str, data: bytes) -> None:
        with open(self.path(relative), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def digests(self) -> dict[str, FileDigest]:
        """sha256 and size of every file staged so far."""
        files, odd = list_files(self.staging)
        assert not odd, odd
        return {rel: sha256_file(self.staging / rel) for rel in sorted(files - UNLISTED_FILES)}

    def commit(self, manifest: Manifest) -> Path:
        """Write ``bundle.json`` last, flush everything, then rename into place."""
        for dirpath, _dirs, filenames in os.walk(self.staging):
            for name in filenames:
                with open(Path(dirpath) / name, "rb") as handle:
                    os.fsync(handle.fileno())
            _fsync_dir(Path(dirpath))
        self.write_bytes(MANIFEST_NAME, manifest.to_json().encode())
        _fsync_dir(self.staging)
        replaced: Path | None = None
        if self.target.exists():
            if not self.force:
                raise BundleExistsError(f"{self.target} appeared while exporting; another export won, nothing was replaced.")
            # Move the old bundle aside first: rename cannot replace a non-empty directory.
            replaced = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.replaced-", dir=self.target.parent))
            os.rename(self.target, replaced / "old")
        try:
            os.rename(self.staging, self.target)
        except OSError as exc:
            if replaced is not None:
                os.rename(replaced / "old", self.target)
            raise BundleExistsError(
                f"could not move the new bundle into {self.target} ({exc.strerror}); "
                "another export may have written it at the same moment."
            ) from None
        finally:
            if replaced is not None:
                shutil.rmtree(replaced, ignore_errors=True)
        _fsync_dir(self.target.parent)
        self._staging = None
        return self.target
