"""What the commands that install things (rehearsal, build-image) share about pip and this package."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from ..errors import UsageError


def package_source() -> str:
    """Where pip can install this paritybundle from: its source directory or wheel.

    Raises:
        UsageError: paritybundle was not installed from a local directory or file.
    """
    try:
        direct_url = metadata.distribution("paritybundle").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        direct_url = None
    if direct_url:
        url = json.loads(direct_url).get("url", "")
        if url.startswith("file://"):
            path = Path(url[len("file://") :])
            if path.exists():
                return str(path)
    raise UsageError(
        "cannot find where this paritybundle was installed from; pass --package with its wheel or source directory."
    )


def pip_reason(output: str) -> str:
    """pip's own reason, in one paragraph: its ERROR lines, or the tail of what it said."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    chosen = errors or lines[-5:]
    return " ".join(" ".join(chosen).split())[:1200]
