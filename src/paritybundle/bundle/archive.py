"""Reading single-file bundles: every command accepts a ``.tar.gz`` from ``bundle pack``.

An archive is untrusted input. It is unpacked member by member into a private
temporary directory (mode 0700), never with ``tarfile.extract``, and refused whole
on the first member that is: an absolute path, a ``..`` component, a backslash or
NUL in its name, anything but a regular file or directory (symlinks, hard links,
devices, FIFOs), a duplicate, a file not listed in ``bundle.json`` (checked as soon
as the manifest has been read; ``bundle pack`` puts it first), or past the bounds
on member count and unpacked size (a gzip bomb). Only then is the directory
verified like any bundle directory, and only then used.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import BundleInvalid, UsageError
from .layout import MANIFEST_NAME, UNLISTED_FILES
from .manifest import parse_manifest
from .private import private_directory

MAX_MEMBERS = 10_000
# Unpacked bytes allowed per archive; PARITYBUNDLE_MAX_UNPACKED_BYTES overrides (models can be big).
DEFAULT_MAX_UNPACKED_BYTES = 64 * 1024 ** 3
_COPY_CHUNK = 1024 * 1024
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")

def max_unpacked_bytes() -> int:
    raw = os.environ.get("PARITYBUNDLE_MAX_UNPACKED_BYTES")
    if raw is None:
        return DEFAULT_MAX_UNPACKED_BYTES
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"PARITYBUNDLE_MAX_UNPACKED_BYTES={raw!r} is not a whole number of bytes.") from None


_unpacked: dict[tuple[str, int, int], Path] = {}


def unpacked(archive: Path) -> Path:
    """The private directory an archive was unpacked into, unpacking it on first use.

    Keyed by path, size and mtime, so one process (``inspect`` then ``check``, or a server)
    unpacks an unchanged archive once; the directory is still verified on every open.
    """
    stat = archive.stat()
    key = (str(archive.resolve()), stat.st_size, stat.st_mtime_ns)
    directory = _unpacked.get(key)
    if directory is None or not directory.is_dir():
        directory = _unpacked[key] = extract(archive)
    return directory


def _member_path(name: str) -> str:
    """The member's normalised relative path; raises BundleInvalid for anything unsafe."""
    if "\x00" in name or "\\" in name:
        raise BundleInvalid(f"archive member {name!r} has a NUL or backslash in its name; the archive is refused.")
    if name.startswith("/"):
        raise BundleInvalid(f"archive member {name!r} is an absolute path; the archive is refused.")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise BundleInvalid(f"archive member {name!r} climbs out with '..'; the archive is refused.")
    return "/".join(parts)


def extract(archive: Path) -> Path:
    """Safely unpack a bundle archive into a private temp dir (removed at exit); returns the dir.

    Raises:
        BundleInvalid: an unsafe or unlisted member, a bound passed, or a corrupt archive.
    """
    limit_bytes = max_unpacked_bytes()
    target = private_directory("paritybundle-archive-")
    try:
        _extract_into(archive, target, limit_bytes)
    except BundleInvalid:
        shutil.rmtree(target, ignore_errors=True)
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise BundleInvalid(f"{archive} is not a readable bundle archive ({type(exc).__name__}: {exc}); "
                            "recreate it with `bundle pack`.") from None
    return target


def _extract_into(archive: Path, target: Path, limit_bytes: int) -> None:
    seen: set[str] = set()
    listed: set[str] | None = None
    total = 0
    with tarfile.open(archive, mode="r:*") as tar:
        for count, member in enumerate(tar, start=1):
            if count > MAX_MEMBERS:
                raise BundleInvalid(f"{archive} has more than {MAX_MEMBERS} members; the archive is refused.")
            relative = _member_path(member.name)
            if not relative:
                if member.isdir():
                    continue  # "." itself
                raise BundleInvalid(f"archive member {member.name!r} has no usable name; the archive is refused.")
            if relative in seen:
                raise BundleInvalid(f"archive member {relative!r} appears twice; the archive is refused.")
            seen.add(relative)
            if member.isdir():
                (target / relative).mkdir(parents=True, exist_ok=True, mode=0o700)
                continue
            if not member.isreg():
                kind = ("symlink" if member.issym() else "hard link" if member.islnk() else
                        "FIFO" if member.isfifo() else "device" if member.isdev() else "special file")
                raise BundleInvalid(f"archive member {relative!r} is a {kind}; bundles hold regular files only.")
            if listed is not None and relative not in listed and relative not in UNLISTED_FILES:
                raise BundleInvalid(f"archive member {relative!r} is not listed in {MANIFEST_NAME}; the archive is refused.")
            total += member.size
            if total > limit_bytes:
                raise BundleInvalid(f"{archive} unpacks to more than {limit_bytes} bytes; the archive is refused "
                                    "(set PARITYBUNDLE_MAX_UNPACKED_BYTES to allow more).")
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has data
            written = 0
            with source, open(destination, "xb") as sink:  # "x": never through an existing path
                while chunk := source.read(_COPY_CHUNK):
                    written += len(chunk)
                    if written > member.size:
                        raise BundleInvalid(f"archive member {relative!r} holds more data than it declares.")
                    sink.write(chunk)
            if relative == MANIFEST_NAME and listed is None:
                listed = set(parse_manifest(destination.read_bytes(), source=f"{archive}:{MANIFEST_NAME}").files)
                unlisted = sorted(seen - listed - UNLISTED_FILES - _directories(listed) - {MANIFEST_NAME})
                if unlisted:
                    raise BundleInvalid(f"archive member {unlisted[0]!r} is not listed in {MANIFEST_NAME}; "
                                        "the archive is refused.")


def _directories(files: set[str]) -> set[str]:
    return {str(parent) for f in files for parent in PurePosixPath(f).parents if str(parent) != "."}
