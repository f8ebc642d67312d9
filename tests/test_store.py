"""Integrity (every file hashed, nothing missing or extra) and atomic, non-destructive writes."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest

from paritybundle.bundle.store import open_bundle, sha256_file
from paritybundle.bundle.writer import BundleWriter
from paritybundle.errors import BundleExistsError, BundleInvalid, UsageError


def test_verified_bundle_lists_every_file(digits_bundle):
    verified = open_bundle(digits_bundle)
    on_disk = {p.relative_to(digits_bundle).as_posix() for p in digits_bundle.rglob("*") if p.is_file()}
    assert on_disk - {"bundle.json"} == set(verified.manifest.files)


@pytest.mark.parametrize(
    "victim",
    [
        "pipeline.onnx",
        "model.onnx",
        "reference/inputs.npz",
        "reference/outputs.npz",
        "environment.lock.json",
        "requirements-serve.txt",
    ],
)
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
    with pytest.raises(RuntimeError, match="export failed midway"):
        with BundleWriter(target) as writer:
            writer.write_bytes("model.onnx", b"half")
            raise RuntimeError("export failed midway")
    assert list(tmp_path.iterdir()) == []


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_graph_altered_so_onnx_runtime_cannot_load_it_is_reported_by_its_hash(bundle_copy):
    # The session is created while the files hash: the altered file must still be what the error names.
    import paritybundle

    (bundle_copy / "pipeline.onnx").write_bytes(b"\0" * (bundle_copy / "pipeline.onnx").stat().st_size)
    with pytest.raises(BundleInvalid, match="pipeline.onnx does not match its sha256"):
        paritybundle.load(bundle_copy)


def test_nothing_loaded_is_handed_back_when_a_file_fails_its_hash(bundle_copy):
    from paritybundle.bundle.store import open_bundle_loading

    _flip_middle_byte(bundle_copy / "reference" / "outputs.npz")
    loaded = []
    with pytest.raises(BundleInvalid, match="reference/outputs.npz does not match its sha256"):
        open_bundle_loading(bundle_copy, None, lambda bundle: loaded.append(bundle) or "session")
    assert len(loaded) == 1  # it ran alongside the hashing, and its result was dropped


def test_loading_runs_while_the_files_hash(bundle_copy, monkeypatch):
    # Deterministic, not timed: hashing cannot finish until load has started, so a
    # sequential implementation would fail here (after the wait) rather than pass slowly.
    import threading

    from paritybundle.bundle import store

    load_started = threading.Event()
    real_verify = store.verify_files

    def verify_after_load_started(root, manifest):
        if not load_started.wait(timeout=10):
            raise AssertionError("the files were hashed before loading began, not alongside it")
        real_verify(root, manifest)

    monkeypatch.setattr(store, "verify_files", verify_after_load_started)
    bundle, loaded = store.open_bundle_loading(bundle_copy, None, lambda b: load_started.set() or b.manifest.name)
    assert loaded == bundle.manifest.name


def test_a_signed_bundle_is_verified_before_onnx_runtime_opens_anything(bundle_copy, monkeypatch, tmp_path):
    import subprocess

    import paritybundle
    from paritybundle.commands.sign import sign
    from paritybundle.runtime import load as loading

    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(private)], check=True)
    subprocess.run(
        ["openssl", "ec", "-in", str(private), "-pubout", "-out", str(public)], check=True, capture_output=True
    )
    sign(bundle_copy, private)
    _flip_middle_byte(bundle_copy / "pipeline.onnx")
    opened = []
    monkeypatch.setattr(loading, "create_session", lambda *a, **k: opened.append(a))
    with pytest.raises(BundleInvalid, match="pipeline.onnx does not match its sha256"):
        paritybundle.load(bundle_copy, public_key=public)
    assert opened == []
    with pytest.raises(BundleInvalid, match="pipeline.onnx does not match its sha256"):
        paritybundle.load(bundle_copy)  # unsigned path: opened alongside, then refused
    assert len(opened) == 1


def test_a_verified_bundles_identity_is_the_sha256_of_its_bundle_json(digits_bundle):
    verified = open_bundle(digits_bundle)
    assert verified.manifest_sha256() == hashlib.sha256((digits_bundle / "bundle.json").read_bytes()).hexdigest()
