"""Each way ``bundle/store.py`` refuses a bundle, with the exact sentence the user reads.

A refusal is the product's output as much as a verdict is: the sentence must name the file and
say what to do. Written against the mutants ``make mutation`` found surviving in the store
(docs/mutation.md): reworded or emptied messages, the signed snapshot, ``source`` paths.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading

import pytest

from paritybundle.bundle.store import (
    MANIFEST_NAME,
    VerifiedBundle,
    open_bundle,
    open_bundle_loading,
    read_manifest,
    read_small_file,
    verify,
)
from paritybundle.commands.sign import sign
from paritybundle.errors import BundleInvalid, UsageError


def _keypair(directory):
    private, public = directory / "k.pem", directory / "k.pub"
    subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(private)], check=True)
    subprocess.run(
        ["openssl", "ec", "-in", str(private), "-pubout", "-out", str(public)], check=True, capture_output=True
    )
    return private, public


def _refusal(call, *args, error=BundleInvalid):
    with pytest.raises(error) as raised:
        call(*args)
    return str(raised.value)


def _returns_within(seconds, call, *args):
    """Run ``call`` in a thread: a read that blocks (a FIFO opened without O_NONBLOCK) fails the test."""
    outcome: list = []

    def target():
        try:
            outcome.append(call(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{call.__name__} blocked for {seconds} s"
    return outcome[0]


def test_a_path_that_does_not_exist_is_a_usage_error_saying_what_to_pass(tmp_path):
    missing = tmp_path / "nowhere"
    assert _refusal(open_bundle, missing, error=UsageError) == (
        f"bundle path {missing} does not exist; pass the directory that `bundle export` wrote or an archive "
        "from `bundle pack`."
    )


def test_a_fifo_as_the_bundle_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "bundle.fifo"
    os.mkfifo(fifo)
    error = _returns_within(10, open_bundle, fifo)
    assert isinstance(error, UsageError)
    assert str(error) == (
        f"{fifo} is neither a bundle directory nor an archive file; pass the directory that "
        "`bundle export` wrote or an archive from `bundle pack`."
    )


def test_a_directory_without_a_manifest_is_named_as_incomplete(tmp_path):
    assert _refusal(open_bundle, tmp_path) == (
        f"{tmp_path} has no {MANIFEST_NAME}; it is not a paritybundle bundle or it is incomplete."
    )


def test_a_broken_manifest_is_named_by_its_full_path_by_every_opener(bundle_copy):
    (bundle_copy / MANIFEST_NAME).write_text("{not json")
    where = str(bundle_copy / MANIFEST_NAME)
    for opener in (read_manifest, open_bundle, verify, lambda p: open_bundle_loading(p, None, lambda b: b)):
        message = _refusal(opener, bundle_copy)
        assert message.startswith(where), message


def test_a_manifest_symlink_is_not_followed(bundle_copy, tmp_path):
    real = tmp_path / "elsewhere.json"
    real.write_bytes((bundle_copy / MANIFEST_NAME).read_bytes())
    (bundle_copy / MANIFEST_NAME).unlink()
    (bundle_copy / MANIFEST_NAME).symlink_to(real)
    assert _refusal(read_manifest, bundle_copy).startswith(f"{bundle_copy} has no {MANIFEST_NAME}")


def test_a_manifest_fifo_is_refused_without_blocking(bundle_copy):
    (bundle_copy / MANIFEST_NAME).unlink()
    os.mkfifo(bundle_copy / MANIFEST_NAME)
    error = _returns_within(10, read_manifest, bundle_copy)
    assert isinstance(error, BundleInvalid)
    assert str(error) == f"{MANIFEST_NAME} is not a regular file; the bundle is refused."


def test_a_small_file_may_reach_its_limit_but_not_pass_it(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"x" * 100)
    assert read_small_file(path, 100, missing="gone") == b"x" * 100
    with pytest.raises(BundleInvalid) as raised:
        read_small_file(path, 99, missing="gone")
    assert str(raised.value) == (
        "f.json is 100 bytes, larger than any the bundle format writes (99); the bundle is refused."
    )
    with pytest.raises(BundleInvalid) as raised:
        read_small_file(tmp_path / "absent", 99, missing="the file is gone; re-export.")
    assert str(raised.value) == "the file is gone; re-export."


def _manifest_listed(bundle_copy):
    return sorted(read_manifest(bundle_copy).files)


def test_each_file_refusal_names_the_file_and_what_to_do(bundle_copy):
    listed = _manifest_listed(bundle_copy)
    target = "requirements-serve.txt"
    assert target in listed
    original = (bundle_copy / target).read_bytes()
    expected = read_manifest(bundle_copy).files[target]

    (bundle_copy / target).write_bytes(original + b"#")
    assert _refusal(verify, bundle_copy) == (
        f"{target} is {len(original) + 1} bytes but the manifest says {expected.bytes}; "
        "the file was truncated or altered, re-export the bundle."
    )

    altered = bytearray(original)
    altered[0] ^= 1
    (bundle_copy / target).write_bytes(bytes(altered))
    import hashlib

    actual = hashlib.sha256(bytes(altered)).hexdigest()
    assert _refusal(verify, bundle_copy) == (
        f"{target} does not match its sha256 in {MANIFEST_NAME} (expected {expected.sha256[:12]}..., "
        f"got {actual[:12]}...); the file was altered, re-export the bundle."
    )

    (bundle_copy / target).unlink()
    assert _refusal(verify, bundle_copy) == (
        f"{target} is listed in {MANIFEST_NAME} but missing from {bundle_copy}; the bundle is incomplete."
    )

    (bundle_copy / target).write_bytes(original)
    (bundle_copy / "notes.txt").write_text("hi")
    assert _refusal(verify, bundle_copy) == (
        f"notes.txt is in {bundle_copy} but not listed in {MANIFEST_NAME}; remove it or re-export the bundle."
    )

    (bundle_copy / "notes.txt").unlink()
    (bundle_copy / "link").symlink_to(bundle_copy / target)
    assert _refusal(verify, bundle_copy) == (
        f"{bundle_copy} contains link (symlink), which a bundle never holds; re-export the bundle."
    )


def test_a_verified_bundle_hands_out_only_listed_paths(bundle_copy):
    bundle = open_bundle(bundle_copy)
    listed = sorted(bundle.manifest.files)[0]
    assert bundle.path(listed) == bundle_copy / listed
    with pytest.raises(KeyError, match="not-listed.bin"):
        bundle.path("not-listed.bin")


def test_every_opener_records_the_path_it_was_given(bundle_copy):
    assert open_bundle(bundle_copy).source == bundle_copy
    assert verify(str(bundle_copy)).source == bundle_copy
    bundle, loaded = open_bundle_loading(str(bundle_copy), None, lambda b: b.manifest.name)
    assert bundle.source == bundle_copy and bundle.root == bundle_copy
    assert loaded == read_manifest(bundle_copy).name


@pytest.fixture
def signed(bundle_copy, tmp_path_factory):
    private, public = _keypair(tmp_path_factory.mktemp("keys"))
    sign(bundle_copy, private)
    return bundle_copy, public


def test_a_signed_bundle_is_used_from_a_private_verified_snapshot(signed):
    directory, public = signed
    for bundle in (
        open_bundle(directory, public),
        verify(directory, public),
        open_bundle_loading(directory, public, lambda b: b)[1],
    ):
        assert isinstance(bundle, VerifiedBundle)
        assert bundle.source == directory and bundle.root != directory
        assert bundle.root.name.startswith("paritybundle-verified-")
        assert stat.S_IMODE(bundle.root.stat().st_mode) == 0o700
        assert bundle.manifest == read_manifest(directory)
        for relative in bundle.manifest.files:
            assert (bundle.root / relative).read_bytes() == (directory / relative).read_bytes()
            parent = (bundle.root / relative).parent
            assert stat.S_IMODE(parent.stat().st_mode) == 0o700, relative
        assert (bundle.root / "bundle.sig").read_bytes() == (directory / "bundle.sig").read_bytes()
    assert any("/" in relative for relative in read_manifest(directory).files)  # nested folders were made


def test_a_signed_bundle_is_loaded_from_the_snapshot(signed):
    directory, public = signed
    bundle, loaded = open_bundle_loading(directory, public, lambda b: (b.root, b.manifest.name))
    assert loaded == (bundle.root, read_manifest(directory).name) and bundle.root != directory


def test_a_signature_is_required_when_a_key_is_given(bundle_copy, tmp_path):
    _, public = _keypair(tmp_path)
    assert _refusal(open_bundle, bundle_copy, public) == (
        "the bundle has no bundle.sig, but a signature is required; sign it with `bundle sign BUNDLE "
        "--key PRIVATE_KEY`."
    )


def test_hashing_with_a_copy_makes_nested_private_folders(tmp_path):
    from paritybundle.bundle.store import sha256_file

    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 3_000_000)  # more than one chunk
    target = tmp_path / "snapshot" / "reference" / "group_1" / "inputs.npz"
    digest = sha256_file(source, copy_to=target)
    import hashlib

    assert digest.sha256 == hashlib.sha256(source.read_bytes()).hexdigest() and digest.bytes == 3_000_000
    assert target.read_bytes() == source.read_bytes()
    # The snapshot's root is private (0700); the folders made inside it are too (Python's mkdir gives
    # the mode to the last folder it makes, which is the one a file lands in).
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700


def test_a_file_that_grows_between_its_size_and_its_read_is_refused(tmp_path, monkeypatch):
    from paritybundle.bundle import store

    path = tmp_path / "bundle.json"
    path.write_bytes(b"{}" * 10)
    real_fstat = os.fstat

    def shrunk(fd):  # the size fstat saw, before a writer appended to the file
        status = real_fstat(fd)
        return os.stat_result((status.st_mode, *status[1:6], status.st_size - 1, *status[7:]))

    monkeypatch.setattr(store.os, "fstat", shrunk)
    with pytest.raises(BundleInvalid) as raised:
        read_small_file(path, 1000, missing="gone")
    assert str(raised.value) == "bundle.json grew while it was being read; the bundle is refused."


def test_a_signed_archive_is_checked_against_the_key(signed, tmp_path):
    from paritybundle.commands.pack import pack

    directory, public = signed
    archive = pack(directory, tmp_path / "signed.tar.gz")
    assert verify(archive, public).manifest == read_manifest(directory)
    _, other = _keypair(tmp_path)
    assert "does not verify with" in _refusal(verify, archive, other)
