"""Signatures: bundle sign, and --key refusing missing, wrong or stale signatures (exit 3)."""

from __future__ import annotations

import json
import subprocess

import pytest

import paritybundle
from bundle_tools import rehash
from paritybundle.cli import main
from paritybundle.commands.pack import pack
from paritybundle.commands.sign import sign
from paritybundle.errors import BundleInvalid, UsageError


def _keypair(directory, name="signing"):
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", str(private)], check=True)
    subprocess.run(
        ["openssl", "ec", "-in", str(private), "-pubout", "-out", str(public)], check=True, capture_output=True
    )
    return private, public


@pytest.fixture
def keys(tmp_path_factory):
    return _keypair(tmp_path_factory.mktemp("keys"))


def test_signed_bundle_verifies_and_checks(bundle_copy, keys, capsys):
    private, public = keys
    assert main(["sign", str(bundle_copy), "--key", str(private)]) == 0
    signature = json.loads((bundle_copy / "bundle.sig").read_text())
    assert signature["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    assert main(["verify", str(bundle_copy), "--key", str(public)]) == 0
    assert "signature verified" in capsys.readouterr().out
    assert paritybundle.check(bundle_copy, public_key=public).passed
    assert not any(p.name.startswith(".bundle.sig") for p in bundle_copy.parent.iterdir())


def test_missing_signature_is_refused_when_a_key_is_given(bundle_copy, keys, capsys):
    assert main(["verify", str(bundle_copy), "--key", str(keys[1])]) == 3
    assert "has no bundle.sig" in capsys.readouterr().err


def test_signature_from_another_key_is_refused(bundle_copy, keys, tmp_path):
    sign(bundle_copy, keys[0])
    _, other_public = _keypair(tmp_path, "other")
    with pytest.raises(BundleInvalid, match="does not verify with"):
        paritybundle.verify(bundle_copy, other_public)


def test_stale_signature_after_rehashed_change_is_refused(bundle_copy, keys):
    sign(bundle_copy, keys[0])
    (bundle_copy / "requirements-serve.txt").write_text("numpy==1.0\n")
    rehash(bundle_copy)  # a consistent bundle again, but not the one that was signed
    with pytest.raises(BundleInvalid, match="changed after signing"):
        paritybundle.check(bundle_copy, public_key=keys[1])


def test_tampered_file_under_a_valid_signature_is_still_refused(bundle_copy, keys):
    sign(bundle_copy, keys[0])
    (bundle_copy / "model.onnx").write_bytes(b"swapped")
    with pytest.raises(BundleInvalid, match="model.onnx is 7 bytes"):
        paritybundle.verify(bundle_copy, keys[1])


def test_signature_travels_in_the_archive(bundle_copy, keys, tmp_path):
    sign(bundle_copy, keys[0])
    archive = pack(bundle_copy, tmp_path / "signed.tar.gz")
    assert paritybundle.verify(archive, keys[1])


def test_tampered_bundle_is_never_signed(bundle_copy, keys):
    (bundle_copy / "model.onnx").write_bytes(b"x")
    with pytest.raises(BundleInvalid, match="model.onnx"):
        sign(bundle_copy, keys[0])
    assert not (bundle_copy / "bundle.sig").exists()


def test_require_signature_needs_a_key(bundle_copy, keys, monkeypatch, capsys):
    monkeypatch.delenv("PARITYBUNDLE_PUBLIC_KEY", raising=False)
    assert main(["check", str(bundle_copy), "--require-signature"]) == 2
    assert "needs a public key" in capsys.readouterr().err
    sign(bundle_copy, keys[0])
    monkeypatch.setenv("PARITYBUNDLE_PUBLIC_KEY", str(keys[1]))
    assert main(["check", str(bundle_copy), "--require-signature"]) == 0


def test_sign_with_a_non_ec_key_is_a_usage_error(bundle_copy, tmp_path):
    rsa = tmp_path / "rsa.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(rsa), "2048"], check=True, capture_output=True)
    with pytest.raises(UsageError, match="elliptic-curve"):
        sign(bundle_copy, rsa)
    assert not (bundle_copy / "bundle.sig").exists()


def test_serve_refuses_an_unsigned_bundle_when_a_key_is_given(bundle_copy, keys, capsys):
    from serving_tools import free_port

    assert main(["serve", str(bundle_copy), "--port", str(free_port()), "--key", str(keys[1])]) == 3
    assert "has no bundle.sig" in capsys.readouterr().err
