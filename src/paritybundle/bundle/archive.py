"""Reading single-file bundles: every command accepts a ``.tar.gz`` from ``bundle pack``.

An archive is untrusted input. It is unpacked member by member into a private
temporary directory (mode 0700), never with ``tarfile.extract``, and refused whole
on the first member that is: an absolute path, a ``..`` component, a backslash or
NUL in its name, anything but a regular file or directory (symlinks, hard links,
devices, FIFOs), a duplicate, a member before ``bundle.json`` (``bundle pack`` puts it
first), a file not listed there or declaring another size than listed (judged before a
byte of it is written), or past the bounds on member count, extended-header size,
unpacked size (a gzip bomb) and time. Only then is the directory verified like any bundle
directory, and only then used.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from ..errors import BundleInvalid, UsageError
from .layout import MANIFEST_NAME, MAX_SIGNATURE_BYTES, SIGNATURE_NAME
from .manifest import MAX_MANIFEST_BYTES, parse_manifest
from .private import private_directory

if TYPE_CHECKING:
    from .store import VerifiedBundle

MAX_MEMBERS = 10_000
# Unpacked bytes allowed per archive; PARITYBUNDLE_MAX_UNPACKED_BYTES overrides (models can be big).
DEFAULT_MAX_UNPACKED_BYTES = 64 * 1024**3
_COPY_CHUNK = 1024 * 1024
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def write_archive(verified: VerifiedBundle, raw: BinaryIO) -> None:
    """A verified bundle as ``.tar.gz`` bytes into ``raw``: ``bundle.json`` first (readers require it), then
    the signature, then the listed files in a fixed order with fixed owners, modes and times, so the same
    bundle always packs to the same content (``bundle pack``; the bundle a scoring job ships to workers)."""
    # gzip and tar store an unsigned 32-bit mtime (1970-2106): a created_at outside it is clamped,
    # not refused (the manifest, which keeps the real time, is inside the archive).
    mtime = min(max(int(verified.manifest.created_at.timestamp()), 0), 2**32 - 1)
    names = [MANIFEST_NAME] + ([n for n in (SIGNATURE_NAME,) if (verified.root / n).is_file()])
    names += sorted(verified.manifest.files)
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = (verified.root / name).stat().st_size
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = mtime, 0o644, 0, 0, "", ""
                with open(verified.root / name, "rb") as source:
                    tar.addfile(info, source)


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
        raise BundleInvalid(
            f"{archive} is not a readable bundle archive ({type(exc).__name__}: {exc}); recreate it with `bundle pack`."
        ) from None
    return target


# Extended headers (pax records, GNU long names) are read whole into memory and parsed with a
# regular expression that is quadratic on crafted input on this Python (CVE-2024-6232: a 160 KB
# pax header took 41 s). A bundle's member names are short: 8 KiB is ample and bounds both.
MAX_EXTENDED_HEADER_BYTES = 8 * 1024
# Wall-clock bound on unpacking one archive; PARITYBUNDLE_MAX_UNPACK_SECONDS overrides.
DEFAULT_MAX_UNPACK_SECONDS = 600.0


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's member parser, refusing an extended header too large to be one of ours before
    tarfile reads it, and GNU sparse members (never written by ``bundle pack``)."""

    def _proc_pax(self, tarfile_):  # noqa: ANN001 (tarfile's own hook)
        _refuse_large_header(self)
        return super()._proc_pax(tarfile_)

    def _proc_gnulong(self, tarfile_):  # noqa: ANN001
        _refuse_large_header(self)
        return super()._proc_gnulong(tarfile_)

    def _proc_sparse(self, tarfile_):  # noqa: ANN001
        raise BundleInvalid(
            "the archive holds a GNU sparse member, which `bundle pack` never writes; the archive is refused."
        )


def _refuse_large_header(info: tarfile.TarInfo) -> None:
    if info.size > MAX_EXTENDED_HEADER_BYTES:
        raise BundleInvalid(
            f"the archive has an extended header of {info.size} bytes (a bundle's are under "
            f"{MAX_EXTENDED_HEADER_BYTES}); the archive is refused."
        )


def max_unpack_seconds() -> float:
    raw = os.environ.get("PARITYBUNDLE_MAX_UNPACK_SECONDS")
    try:
        return DEFAULT_MAX_UNPACK_SECONDS if raw is None else float(raw)
    except ValueError:
        raise UsageError(f"PARITYBUNDLE_MAX_UNPACK_SECONDS={raw!r} is not a number of seconds.") from None


def _extract_into(archive: Path, target: Path, limit_bytes: int) -> None:
    """Member by member, each judged before a byte of it is written:

    * the first file must be ``bundle.json`` (``bundle pack`` writes it first), no larger than any
      manifest; every later member must be listed there (or be ``bundle.sig``, bounded too) and
      declare exactly the size the manifest records, so a member claiming 3 GiB is refused
      before anything is unpacked;
    * names, types, duplicates, member count, total size and time are bounded.
    """
    deadline = time.monotonic() + max_unpack_seconds()
    seen: set[str] = set()
    manifest = None
    total = 0
    with tarfile.open(archive, mode="r:*", tarinfo=_BoundedTarInfo) as tar:
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
                kind = (
                    "symlink"
                    if member.issym()
                    else "hard link"
                    if member.islnk()
                    else "FIFO"
                    if member.isfifo()
                    else "device"
                    if member.isdev()
                    else "special file"
                )
                raise BundleInvalid(f"archive member {relative!r} is a {kind}; bundles hold regular files only.")
            if manifest is None:
                if relative != MANIFEST_NAME:
                    raise BundleInvalid(
                        f"archive member {relative!r} comes before {MANIFEST_NAME}; a bundle archive "
                        "starts with its manifest (recreate it with `bundle pack`)."
                    )
                declared = MAX_MANIFEST_BYTES
            elif relative == SIGNATURE_NAME:
                declared = MAX_SIGNATURE_BYTES
            elif relative not in manifest.files:
                raise BundleInvalid(
                    f"archive member {relative!r} is not listed in {MANIFEST_NAME}; the archive is refused."
                )
            else:
                declared = manifest.files[relative].bytes
                if member.size != declared:
                    raise BundleInvalid(
                        f"archive member {relative!r} declares {member.size} bytes but {MANIFEST_NAME} "
                        f"says {declared}; the archive is refused before unpacking it."
                    )
            if member.size > declared:
                raise BundleInvalid(
                    f"archive member {relative!r} declares {member.size} bytes, more than a "
                    f"{relative} can hold; the archive is refused."
                )
            total += member.size
            if total > limit_bytes:
                raise BundleInvalid(
                    f"{archive} unpacks to more than {limit_bytes} bytes; the archive is refused "
                    "(set PARITYBUNDLE_MAX_UNPACKED_BYTES to allow more)."
                )
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _copy_member(tar, member, destination, relative, deadline)
            if manifest is None:
                manifest = parse_manifest(destination.read_bytes(), source=f"{archive}:{MANIFEST_NAME}")
            if time.monotonic() > deadline:
                raise BundleInvalid(
                    f"unpacking {archive} took over {max_unpack_seconds():g} s; the archive is refused "
                    "(set PARITYBUNDLE_MAX_UNPACK_SECONDS to allow more)."
                )


def _copy_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, destination: Path, relative: str, deadline: float
) -> None:
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has data
    written = 0
    with source, open(destination, "xb") as sink:  # "x": never through an existing path
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > member.size:
                raise BundleInvalid(f"archive member {relative!r} holds more data than it declares.")
            if time.monotonic() > deadline:
                raise BundleInvalid(
                    f"unpacking {relative!r} took too long; the archive is refused "
                    "(set PARITYBUNDLE_MAX_UNPACK_SECONDS to allow more)."
                )
            sink.write(chunk)
