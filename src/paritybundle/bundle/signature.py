"""Verifying signatures over ``bundle.json``, which hashes every other file, so one signature covers all
(signing is :mod:`paritybundle.commands.sign`).

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
from pathlib import Path
from typing import Any

from ..errors import BundleInvalid, UsageError
from .layout import MANIFEST_NAME, SIGNATURE_NAME

ENV_PUBLIC_KEY = "PARITYBUNDLE_PUBLIC_KEY"


def model_signing() -> Any:
    try:
        import model_signing
    except ImportError as exc:
        raise UsageError(
            f"signatures need the model-signing package ({exc.name or exc} is missing); install the extra: "
            "pip install 'paritybundle[sign]'."
        ) from None
    return model_signing


def key_file(path: str | os.PathLike[str], what: str) -> Path:
    key = Path(path)
    if not key.is_file():
        raise UsageError(f"{what} key {key} does not exist or is not a file.")
    return key


def verify_signature(root: Path, public_key: str | os.PathLike[str]) -> None:
    """Refuse a missing, wrong or stale ``bundle.sig`` (exit 3).

    Raises:
        BundleInvalid: no signature, or it does not verify with ``public_key`` over this ``bundle.json``.
    """
    key = elliptic_public_key(public_key)
    signature = root / SIGNATURE_NAME
    if not signature.is_file() or signature.is_symlink():
        raise BundleInvalid(
            f"the bundle has no {SIGNATURE_NAME}, but a signature is required; "
            "sign it with `bundle sign BUNDLE --key PRIVATE_KEY`."
        )
    ms = model_signing()
    try:
        ms.verifying.Config().use_elliptic_key_verifier(public_key=str(key)).verify(root / MANIFEST_NAME, signature)
    except Exception as exc:  # model-signing raises ValueError and library-specific errors alike
        reason = " ".join(str(exc).split())[:300]
        raise BundleInvalid(
            f"{SIGNATURE_NAME} does not verify with {key} ({type(exc).__name__}: {reason}); the bundle was "
            "changed after signing, or signed with another key. Do not deploy it."
        ) from None


def elliptic_public_key(path: str | os.PathLike[str]) -> Path:
    """``path``, once it is known to hold an elliptic-curve public key in PEM.

    A key in another format is the caller's mistake (exit 2), not a sign that the bundle
    changed after signing (exit 3), which is what verifying with it would otherwise report.

    Raises:
        UsageError: no such file, not PEM, a private key, or not an elliptic-curve key.
    """
    key = key_file(path, "public")
    model_signing()  # its dependencies (cryptography) come with it; say how to install it if missing
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = key.read_bytes()[:65536]
    try:
        loaded = serialization.load_pem_public_key(data)
    except Exception:  # ValueError, UnsupportedAlgorithm: anything that is not a PEM public key
        if b"PRIVATE KEY" in data:
            raise UsageError(
                f"{key} is a private key; --key takes the public one (openssl ec -in PRIVATE.pem -pubout -out key.pub)."
            ) from None
        raise UsageError(
            f"{key} is not a public key in PEM; pass the elliptic-curve public key the bundle was signed for."
        ) from None
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise UsageError(
            f"{key} is a {type(loaded).__name__.replace('_', '')} key; bundle signatures use "
            "elliptic-curve keys (P-256/384/521)."
        )
    return key


def resolve_key(public_key: str | os.PathLike[str] | None, require: bool) -> str | None:
    """The public key to verify with: the argument, else $PARITYBUNDLE_PUBLIC_KEY.

    Raises:
        UsageError: ``require`` and no key configured (a pipeline must not silently skip verification).
    """
    key = public_key or os.environ.get(ENV_PUBLIC_KEY) or None
    if require and not key:
        raise UsageError(f"--require-signature needs a public key: pass --key or set {ENV_PUBLIC_KEY}.")
    return None if key is None else str(key)
