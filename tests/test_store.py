"""Integrity (every file hashed, nothing missing or extra) and atomic, non-destructive writes."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest

from paritybundle.errors import BundleExistsError, BundleInvalid, UsageError
from paritybundle.store import BundleWriter, open_bundle, sha256_file


def test_verified_bundle_lists_every_file(digits_bundle):
    verified = open_bundle(digits_bundle)
    on_disk = {p.relative_to(digits_bundle).as_posix() for p in digits_bundle.rglob("*") if p.is_file()}
    assert on_disk - {"bundle.json"} == set(verified.manifest.files)


@pytest.mark.parametrize("victim", ["pipeline.onnx", "model.onnx", "reference/inputs.npz",
                                    "reference/outputs.npz", "environment.lock.json", "requirements-serve.txt"])
def test_flipped_byte_is_refused_naming_the_file(bundle_copy, victim):
    path = bundle_copy / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleInvalid, match=f"{victim} does not match its sha256"):
        open_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "reference" / "outputs.npz").unlink()
    with pytest.raises(BundleInvalid, match="reference/outputs.npz is listed .* but missing"):
        open_bundle(bundle_copy)


def test_extra_file_is_refused(bundle_copy):
    (bundle_copy / "reference" / "sneaky.npz").write_bytes(b"x")
    with pytest.raises(BundleInvalid, match="reference/sneaky.npz is in .* not listed"):
        open_bundle(bundle_copy)


def test_truncated_file_is_refused_by_size(bundle_copy):
    path = bundle_copy / "model.onnx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BundleInvalid, match="model.onnx is 100 bytes but the manifest says"):
        open_bundle(bundle_copy)


def test_symlink_inside_bundle_is_refused(bundle_copy):
    (bundle_copy / "link").symlink_to(bundle_copy / "model.onnx")
    with pytest.raises(BundleInvalid, match="link \\(symlink\\)"):
        open_bundle(bundle_copy)


def test_missing_manifest_is_refused(bundle_copy):
    (bundle_copy / "bundle.json").unlink()
    with pytest.raises(BundleInvalid, match="has no bundle.json"):
        open_bundle(bundle_copy)


def test_nonexistent_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        open_bundle(tmp_path / "nope")


def test_hashing_matches_hashlib_and_streams_with_flat_memory(tmp_path):
    path = tmp_path / "big.bin"
    block = bytes(range(256)) * 4096  # 1 MiB
    with open(path, "wb") as handle:
        for _ in range(64):
            handle.write(block)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    tracemalloc.start()
    digest = sha256_file(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert digest.sha256 == expected and digest.bytes == 64 * 1024 * 1024
    # One 1 MiB read buffer, not the 64 MiB file.
    assert peak < 4 * 1024 * 1024, f"hashing a 64 MiB file peaked at {peak} bytes"


def test_writer_refuses_existing_target_without_force(tmp_path):
    target = tmp_path / "b"
    target.mkdir()
    (target / "keep").write_text("precious")
    with pytest.raises(BundleExistsError, match="already exists; pass --force"):
        with BundleWriter(target):
            pass
    assert (target / "keep").read_text() == "precious"


def test_writer_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with BundleWriter(target) as writer:
            writer.write_bytes("model.onnx", b"half")
            raise RuntimeError("export failed midway")
    assert list(tmp_path.iterdir()) == []
