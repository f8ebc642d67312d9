"""``bundle check --url``: the bundle's references through a live V2 endpoint.

Composes the serving layer's client with the check engine, which never imports an HTTP client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..bundle.manifest import Tolerance
from ..check.checks import check_endpoint
from ..check.results import CheckReport
from ..serving.client import V2Client


def check_url(
    path: str | os.PathLike[str],
    url: str,
    *,
    model: str | None = None,
    tolerance: Tolerance | None = None,
    per_output_tolerance: Mapping[str, Tolerance] | None = None,
    request_batch: int = 64,
    timeout_s: float = 300.0,
    public_key: str | os.PathLike[str] | None = None,
    progress: bool = False,
    histograms: bool = False,
) -> CheckReport:
    """Send a bundle's reference inputs to a live V2 endpoint and judge its answers.

    Works against any Open Inference Protocol (V2) REST server, so a deployment
    pipeline can prove the deployed service, not just the file, matches research.

    Args:
        path: the bundle directory (verified first).
        url: the server's base URL, e.g. ``http://127.0.0.1:8080``.
        model: the model name on the server (default: the bundle's name).
        tolerance / per_output_tolerance: as in :func:`paritybundle.check`.
        request_batch: reference samples per request.
        timeout_s: the endpoint's deadline for all the check's requests together.

    Raises:
        BundleInvalid: the local bundle fails integrity.
        EndpointError: unreachable, timed out, not a V2 server, or a model that does not match.
    """
    return check_endpoint(
        path,
        V2Client(url, timeout_s=timeout_s),
        url=url,
        model=model,
        tolerance=tolerance,
        per_output_tolerance=per_output_tolerance,
        request_batch=request_batch,
        public_key=public_key,
        progress=progress,
        histograms=histograms,
    )
