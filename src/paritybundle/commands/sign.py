"""``bundle sign``: a signature over ``bundle.json`` (verification: :mod:`paritybundle.bundle.signature`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..bundle.layout import MANIFEST_NAME, SIGNATURE_NAME
from ..bundle.signature import key_file, model_signing
from ..bundle.store import open_bundle
from ..errors import BundleInvalid, UsageError


def sign(bundle: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> Path:
    """Verify a bundle directory, then write ``bundle.sig`` over its ``bundle.json``.

    Raises:
        UsageError: an archive (sign the directory, then pack), a missing key, or no model-signing.
        BundleInvalid: the bundle fails verification (a tampered bundle is never signed).
    """
    root = Path(bundle)
    if root.is_file():
        raise UsageError(f"{root} is an archive; sign the bundle directory, then `bundle pack` it.")
    key = key_file(private_key, "private")
    verified = open_bundle(root)
    existing = verified.root / SIGNATURE_NAME
    if existing.is_symlink() or (existing.exists() and not existing.is_file()):
        raise BundleInvalid(
            f"{existing} is not a regular file, so it cannot be replaced by the signature; the bundle "
            "is refused (remove it, or re-export the bundle)."
        )
    ms = model_signing()
    # Written beside the bundle and renamed in: a crash never leaves a stray file inside it.
    handle, temporary = tempfile.mkstemp(prefix=".bundle.sig.partial-", dir=root.parent)
    os.close(handle)
    try:
        ms.signing.Config().use_elliptic_key_signer(private_key=str(key)).sign(verified.root / MANIFEST_NAME, temporary)
        os.replace(temporary, verified.root / SIGNATURE_NAME)
    except (ValueError, TypeError, AttributeError) as exc:
        # model-signing raises AttributeError for a key without a curve (RSA), ValueError for bad PEM.
        raise UsageError(
            f"cannot sign with {key} ({type(exc).__name__}: {exc}); use an elliptic-curve "
            "(P-256/384/521) private key in PEM."
        ) from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return verified.root / SIGNATURE_NAME
