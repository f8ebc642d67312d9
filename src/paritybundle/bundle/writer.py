"""Writing bundles atomically: :class:`BundleWriter`.

Files land in a staging directory beside the target, are flushed, and the directory is
renamed into place at the end, so a reader sees either no bundle or a complete one. With
``--force`` the new bundle is exchanged with the old in one ``renameat2(RENAME_EXCHANGE)``
(Linux), so the target is never missing, not even for a moment; where the file system cannot
exchange, the old bundle is moved aside first (a window of microseconds, said in the docs).

A writer holds an ``flock`` on its staging directory while it lives. A staging directory of
an earlier run that was killed is recognised by that lock being free (the kernel releases it
when the process dies, even on SIGKILL) and by its age, and removed by the next writer.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
import time
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
        self._lock = -1

    def __enter__(self) -> BundleWriter:
        if self.target.exists() and not self.force:
            raise BundleExistsError(
                f"{self.target} already exists; pass --force (force=True) to replace it, or choose another path."
            )
        if self.target.exists() and (self.target.is_symlink() or not self.target.is_dir()):
            raise UsageError(
                f"{self.target} exists and is not a bundle directory; --force replaces a bundle, choose another path."
            )
        self._staging, self._lock = make_staging(self.target)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._staging is not None and self._staging.exists():
            shutil.rmtree(self._staging, ignore_errors=True)
        os.close(self._lock)

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
        publish(self.staging, self.target, force=self.force)
        _fsync_dir(self.target.parent)
        self._staging = None
        return self.target


# A staging directory younger than this is never taken for a dead run's: its writer locks it
# microseconds after creating it, but the lock cannot be taken in the same instant.
STALE_AFTER_S = 60.0


def make_staging(target: Path) -> tuple[Path, int]:
    """A new staging directory beside ``target`` (mode as the umask allows: bundles are read by
    others), locked by this process; stale ones of killed runs are removed first.

    Returns:
        The directory, and the descriptor holding its lock (close it when done).

    Raises:
        UsageError: the parent directory cannot be written.
    """
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(parent, target.name)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
        lock = os.open(staging, os.O_RDONLY)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        raise UsageError(f"cannot write {target} ({exc.strerror}); choose a writable path.") from None
    # mkdtemp makes it 0700; a bundle is an artifact others read (a container's non-root user).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    return staging, lock


def remove_stale_staging(parent: Path, name: str) -> list[Path]:
    """Remove the staging directories (or files) of ``name`` whose writers provably died: old enough,
    and their lock free. Returns what was removed."""
    removed = []
    for candidate in parent.glob(f".{name}.partial-*"):
        try:
            if candidate.is_symlink() or not (candidate.is_dir() or candidate.is_file()):
                continue
            if time.time() - candidate.stat().st_mtime < STALE_AFTER_S:
                continue
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live writer: BlockingIOError
        except OSError:
            continue
        else:
            if candidate.is_dir():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
        finally:
            os.close(fd)
    return removed


def publish(staging: Path, target: Path, *, force: bool) -> None:
    """Move a complete staging directory into place as ``target``.

    With ``force`` and an existing ``target``, the two are exchanged atomically where the file
    system can (the old one is then removed from the staging path), so readers always find a
    complete target, old or new.

    Raises:
        BundleExistsError: ``target`` exists and ``force`` is false, or another writer won.
    """
    if target.exists() or target.is_symlink():
        if not force:
            raise BundleExistsError(
                f"{target} appeared while writing; another export (or writer) won, nothing was replaced."
            )
        if _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now the old one
            _fsync_dir(target.parent)
            return
        _replace_in_two_steps(staging, target)
    else:
        try:
            os.rename(staging, target)
        except OSError as exc:
            raise BundleExistsError(
                f"could not move the new bundle into {target} ({exc.strerror}); another "
                "writer may have written it at the same moment."
            ) from None
    _fsync_dir(target.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise BundleExistsError(f"could not replace {b} ({os.strerror(code)}); nothing was replaced.")


def _replace_in_two_steps(staging: Path, target: Path) -> None:
    """Where exchanging is not possible: move the old aside, the new in (a moment with no target)."""
    replaced = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
    os.rename(target, replaced / "old")
    try:
        os.rename(staging, target)
    except OSError as exc:
        os.rename(replaced / "old", target)
        raise BundleExistsError(
            f"could not move the new bundle into {target} ({exc.strerror}); another "
            "writer may have written it at the same moment."
        ) from None
    finally:
        shutil.rmtree(replaced, ignore_errors=True)
