"""Signatures over ``bundle.json``, which hashes every other file, so one signature covers all.

The format is the field's own: ``bundle.sig`` is a sigstore bundle (DSSE envelope
around an in-toto statement naming ``bundle.json`` and its sha256) made by the
``model-signing`` package's key-based method, entirely offline, with an elliptic-curve
key (P-256/384/521). Anyone can verify it without paritybundle:
``model_signing verify key --signature bundle.sig --public_key key.pub bundle.json``.

Keys (OpenSSL):
``openssl ecparam -genkey -name prime256v1 -noout -out signing.pem`` then
``openssl ec -in signing.pem -pubout -out signing.pub``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import BundleInvalid, UsageError
from .manifest import MANIFEST_NAME, SIGNATURE_NAME

ENV_PUBLIC_KEY = "PARITYBUNDLE_PUBLIC_KEY"


def _model_signing() -> Any:
    try:
        import model_signing
    except ImportError as exc:
        raise UsageError(
            f"signatures need the model-signing package ({exc.name or exc} is missing); install the extra: "
            "pip install 'paritybundle[sign]'."
        ) from None
    return model_signing


def _key(path: str | os.PathLike[str], what: str) -> Path:
    key = Path(path)
    if not key.is_file():
        raise UsageError(f"{what} key {key} does not exist or is not a file.")
    return key


def sign(bundle: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> Path:
    """Verify a bundle directory, then write ``bundle.sig`` over its ``bundle.json``.

    Raises:
        UsageError: an archive (sign the directory, then pack), a missing key, or no model-signing.
        BundleInvalid: the bundle fails verification (a tampered bundle is never signed).
    """
    from .store import open_bundle

    root = Path(bundle)
    if root.is_file():
        raise UsageError(f"{root} is an archive; sign the bundle directory, then `bundle pack` it.")
    key = _key(private_key, "private")
    verified = open_bundle(root)
    ms = _model_signing()
    # Written beside the bundle and renamed in: a crash never leaves a stray file inside it.
    handle, temporary = tempfile.mkstemp(prefix=".bundle.sig.partial-", dir=root.parent)
    os.close(handle)
    try:
        ms.signing.Config().use_elliptic_key_signer(private_key=str(key)).sign(
            verified.root / MANIFEST_NAME, temporary)
        os.replace(temporary, verified.root / SIGNATURE_NAME)
    except (ValueError, TypeError, AttributeError) as exc:
        # model-signing raises AttributeError for a key without a curve (RSA), ValueError for bad PEM.
        raise UsageError(f"cannot sign with {key} ({type(exc).__name__}: {exc}); use an elliptic-curve "
                         "(P-256/384/521) private key in PEM.") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return verified.root / SIGNATURE_NAME


def verify_signature(root: Path, public_key: str | os.PathLike[str]) -> None:
    """Refuse a missing, wrong or stale ``bundle.sig`` (exit 3).

    Raises:
        BundleInvalid: no signature, or it does not verify with ``public_key`` over this ``bundle.json``.
    """
    key = _key(public_key, "public")
    signature = root / SIGNATURE_NAME
    if not signature.is_file() or signature.is_symlink():
        raise BundleInvalid(f"the bundle has no {SIGNATURE_NAME}, but a signature is required; "
                            "sign it with `bundle sign BUNDLE --key PRIVATE_KEY`.")
    ms = _model_signing()
    try:
        ms.verifying.Config().use_elliptic_key_verifier(public_key=str(key)).verify(root / MANIFEST_NAME, signature)
    except Exception as exc:  # model-signing raises ValueError and library-specific errors alike
        reason = " ".join(str(exc).split())[:300]
        raise BundleInvalid(
            f"{SIGNATURE_NAME} does not verify with {key} ({type(exc).__name__}: {reason}); the bundle was "
            "changed after signing, or signed with another key. Do not deploy it."
        ) from None


def resolve_key(public_key: str | os.PathLike[str] | None, require: bool) -> str | None:
    """The public key to verify with: the argument, else $PARITYBUNDLE_PUBLIC_KEY.

    Raises:
        UsageError: ``require`` and no key configured (a pipeline must not silently skip verification).
    """
    key = public_key or os.environ.get(ENV_PUBLIC_KEY) or None
    if require and not key:
        raise UsageError(f"--require-signature needs a public key: pass --key or set {ENV_PUBLIC_KEY}.")
    return None if key is None else str(key)
