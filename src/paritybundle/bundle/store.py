"""Opening and verifying bundles on disk: parse -> verify -> use.

:func:`open_bundle` validates ``bundle.json``, then hashes every listed file (streamed,
so memory stays flat however big the model), refuses missing or extra files and
symlinks, and only then hands back a :class:`VerifiedBundle` whose paths the rest of
paritybundle may open. :func:`open_bundle_loading` does the same while the caller loads
the model: what it loaded is handed back only once every hash matched.

Writing is :mod:`.writer`'s job.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import BundleInvalid, UsageError
from .layout import MANIFEST_NAME, MAX_SIGNATURE_BYTES, SIGNATURE_NAME, UNLISTED_FILES
from .manifest import MAX_MANIFEST_BYTES, FileDigest, Manifest, parse_manifest
from .private import is_private, private_directory

_CHUNK = 1024 * 1024
Loaded = TypeVar("Loaded")


def sha256_file(path: Path, copy_to: Path | None = None) -> FileDigest:
    """Hash a file in 1 MiB chunks: memory stays flat for a file of any size.

    ``copy_to``: also write every chunk hashed there (a new file), in the same single read.

    Example:
        >>> sha256_file(Path("bundle/model.onnx")).bytes  # doctest: +SKIP
    """
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    sink = None
    if copy_to is not None:
        copy_to.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sink = open(copy_to, "xb")
    try:
        with open(path, "rb", buffering=0) as handle:  # pragma: no mutate (readinto fills our buffer)
            while True:
                n = handle.readinto(buffer)
                if not n:
                    break
                digest.update(view[:n])
                if sink is not None:
                    sink.write(view[:n])
                size += n
    finally:
        if sink is not None:
            sink.close()
    return FileDigest(sha256=digest.hexdigest(), bytes=size)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose manifest parsed and whose every file matched its hash.

    ``root`` is the directory read (for an archive, the private directory it was
    unpacked into); ``source`` is the path the caller gave.
    """

    root: Path
    manifest: Manifest
    source: Path | None = None

    def manifest_sha256(self) -> str:
        """The sha256 of the verified ``bundle.json`` (for a signed bundle, the snapshot's): the bundle's
        identity in MLflow tags and capture files."""
        return hashlib.sha256((self.root / MANIFEST_NAME).read_bytes()).hexdigest()

    def path(self, relative: str) -> Path:
        """The on-disk path of a file the manifest lists."""
        if relative not in self.manifest.files:
            raise KeyError(relative)  # a bug: callers only ask for listed files
        return self.root / relative


def list_files(root: Path) -> tuple[set[str], list[str]]:
    """Relative POSIX paths of regular files under root, and anything that is not one."""
    files: set[str] = set()
    odd: list[str] = []
    # followlinks=False keeps the walk out of a linked tree; the link itself is refused either way.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):  # pragma: no mutate
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                odd.append(f"{rel} (symlink)")
            elif name in filenames:
                if full.is_file():
                    files.add(rel)
                else:
                    odd.append(f"{rel} (not a regular file)")
    return files, odd


def bundle_directory(path: str | os.PathLike[str]) -> Path:
    """The directory to read: the path itself, or where its archive was safely unpacked."""
    root = Path(path)
    if not root.exists():
        raise UsageError(
            f"bundle path {root} does not exist; pass the directory that `bundle export` wrote "
            "or an archive from `bundle pack`."
        )
    if root.is_dir():
        return root
    if not root.is_file():  # a device, FIFO or socket would be read forever (`bundle verify /dev/zero`)
        raise UsageError(
            f"{root} is neither a bundle directory nor an archive file; pass the directory that "
            "`bundle export` wrote or an archive from `bundle pack`."
        )
    from .archive import unpacked

    return unpacked(root)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Parse ``bundle.json`` of a bundle directory or archive (no file hashing)."""
    root = bundle_directory(path)
    return parse_manifest(manifest_bytes(root), source=str(root / MANIFEST_NAME))


def manifest_bytes(root: Path) -> bytes:
    """The bytes of ``root/bundle.json``, read once and never more than a manifest can hold.

    Raises:
        BundleInvalid: no manifest, not a regular file, or larger than any manifest.
    """
    return read_small_file(
        root / MANIFEST_NAME,
        MAX_MANIFEST_BYTES,
        missing=(f"{root} has no {MANIFEST_NAME}; it is not a paritybundle bundle or it is incomplete."),
    )


def read_small_file(path: Path, limit: int, *, missing: str) -> bytes:
    """A regular file's bytes, refused (not read) when larger than ``limit``: judged by ``fstat`` of the
    opened file and by what is actually read, so a sparse or growing file cannot pass."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise BundleInvalid(missing) from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):  # judged before fdopen, which raises on a directory
        os.close(fd)
        raise BundleInvalid(f"{path.name} is not a regular file; the bundle is refused.")
    with os.fdopen(fd, "rb") as handle:
        if status.st_size > limit:
            raise BundleInvalid(
                f"{path.name} is {status.st_size} bytes, larger than any the bundle format writes "
                f"({limit}); the bundle is refused."
            )
        # read(n) allocates n bytes up front: ask for what fstat says is there, and one more to see growth.
        raw = handle.read(status.st_size + 1)
    if len(raw) > status.st_size:
        raise BundleInvalid(f"{path.name} grew while it was being read; the bundle is refused.")
    return raw


def verify_files(root: Path, manifest: Manifest, copy_to: Path | None = None) -> None:
    """Check that the directory holds exactly the listed files with their hashes.

    ``copy_to``: also copy each file there as it is read, so the copy is exactly the bytes hashed.

    Raises:
        BundleInvalid: naming the first missing, extra, altered or odd file.
    """
    present, odd = list_files(root)
    if odd:
        raise BundleInvalid(f"{root} contains {odd[0]}, which a bundle never holds; re-export the bundle.")
    listed = set(manifest.files)
    missing = sorted(listed - present)
    if missing:
        raise BundleInvalid(
            f"{missing[0]} is listed in {MANIFEST_NAME} but missing from {root}; the bundle is incomplete."
        )
    extra = sorted(present - listed - UNLISTED_FILES)
    if extra:
        raise BundleInvalid(
            f"{extra[0]} is in {root} but not listed in {MANIFEST_NAME}; remove it or re-export the bundle."
        )
    for rel in sorted(listed):
        expected = manifest.files[rel]
        actual = sha256_file(root / rel, copy_to=None if copy_to is None else copy_to / rel)
        if actual.bytes != expected.bytes:
            raise BundleInvalid(
                f"{rel} is {actual.bytes} bytes but the manifest says {expected.bytes}; "
                "the file was truncated or altered, re-export the bundle."
            )
        if actual.sha256 != expected.sha256:
            raise BundleInvalid(
                f"{rel} does not match its sha256 in {MANIFEST_NAME} "
                f"(expected {expected.sha256[:12]}..., got {actual.sha256[:12]}...); "
                "the file was altered, re-export the bundle."
            )


def open_bundle(path: str | os.PathLike[str], public_key: str | os.PathLike[str] | None = None) -> VerifiedBundle:
    """Parse and verify a bundle directory before anything in it is used.

    Args:
        path: the bundle directory, or a ``.tar.gz`` from ``bundle pack`` (unpacked safely first).
        public_key: if given, ``bundle.sig`` must verify with it over ``bundle.json`` before
            any other file is looked at.

    Returns:
        A :class:`VerifiedBundle`.

    Raises:
        UsageError: the path does not exist or is not a directory.
        BundleInvalid: bad manifest, missing, extra or altered file.

    Example:
        >>> open_bundle("artifacts/digits").manifest.name  # doctest: +SKIP
        'digits'
    """
    root = bundle_directory(path)
    if public_key is not None and not is_private(root):
        return _verified_snapshot(root, public_key, Path(path))
    manifest = parse_manifest(manifest_bytes(root), source=str(root / MANIFEST_NAME))
    _verify(root, manifest, public_key)
    return VerifiedBundle(root=root, manifest=manifest, source=Path(path))


def _verified_snapshot(root: Path, public_key: str | os.PathLike[str], source: Path) -> VerifiedBundle:
    """A signed bundle directory, each file read exactly once into a private directory (0700) as it is
    verified; everything afterwards (the signature check, parsing, ONNX Runtime) reads those bytes.

    Reading the manifest to parse it and again to check its signature, or hashing a graph and
    then letting ONNX Runtime open it by path, leaves a window in which a writer of the bundle
    directory can swap in a file nobody verified; a private copy of the verified bytes closes it.
    The copy lives until the process exits.
    """
    from .signature import verify_signature

    snapshot = private_directory("paritybundle-verified-")
    raw = manifest_bytes(root)
    (snapshot / MANIFEST_NAME).write_bytes(raw)
    signature = read_small_file(
        root / SIGNATURE_NAME,
        MAX_SIGNATURE_BYTES,
        missing=(
            f"the bundle has no {SIGNATURE_NAME}, but a signature is required; sign it with `bundle sign BUNDLE "
            "--key PRIVATE_KEY`."
        ),
    )
    (snapshot / SIGNATURE_NAME).write_bytes(signature)
    verify_signature(snapshot, public_key)
    manifest = parse_manifest(raw, source=str(root / MANIFEST_NAME))
    verify_files(root, manifest, copy_to=snapshot)
    return VerifiedBundle(root=snapshot, manifest=manifest, source=source)


def open_bundle_loading(
    path: str | os.PathLike[str], public_key: str | os.PathLike[str] | None, load: Callable[[VerifiedBundle], Loaded]
) -> tuple[VerifiedBundle, Loaded]:
    """:func:`open_bundle`, with ``load(bundle)`` (creating ONNX Runtime sessions) run while the files hash.

    For a large model, hashing and loading each take about a second per GiB, and both
    hashlib and ONNX Runtime release the GIL: side by side, start-up costs the longer of
    the two rather than their sum. Nothing ``load`` returns is handed back before every
    hash matched, and an altered file is reported in preference to whatever ``load``
    raised (it names the file; a failed load of an altered graph would not).

    With ``public_key`` the bundle is verified in full first (into a private snapshot, see
    :func:`_verified_snapshot`): a signed bundle's files are never parsed before they are
    verified, and ``load`` reads the verified bytes. Without a signature nothing is lost by
    overlapping: whoever can alter the files can rewrite the manifest's hashes too, so
    hashing first would protect nothing that hashing alongside does not.

    Raises:
        UsageError, BundleInvalid: as :func:`open_bundle`; anything ``load`` raises.
    """
    if public_key is not None:
        bundle = open_bundle(path, public_key)
        return bundle, load(bundle)
    root = bundle_directory(path)
    manifest = parse_manifest(manifest_bytes(root), source=str(root / MANIFEST_NAME))
    bundle = VerifiedBundle(root=root, manifest=manifest, source=Path(path))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="paritybundle-verify") as pool:  # pragma: no mutate
        hashing = pool.submit(verify_files, root, manifest)
        try:
            loaded = load(bundle)
        except BaseException:
            altered = hashing.exception()  # waits for the hashes
            if altered is not None:
                raise altered from None
            raise
        hashing.result()
    return bundle, loaded


def verify(path: str | os.PathLike[str], public_key: str | os.PathLike[str] | None = None) -> VerifiedBundle:
    """Integrity only: manifest, signature (with ``public_key``) and every file's hash; no inference.

    Raises:
        UsageError: the path does not exist.
        BundleInvalid: naming the offending file, or a missing/wrong/stale signature.
    """
    return open_bundle(path, public_key)


def _verify(root: Path, manifest: Manifest, public_key: str | os.PathLike[str] | None) -> None:
    if public_key is not None:
        from .signature import verify_signature

        verify_signature(root, public_key)
    verify_files(root, manifest)
