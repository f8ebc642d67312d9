"""Reports as JSON: every result model's own schema (``schema_version`` in each), one place to write it."""

from __future__ import annotations

from pydantic import BaseModel


def to_json(report: BaseModel) -> str:
    """The report as indented JSON with a trailing newline (what ``--json`` writes)."""
    return report.model_dump_json(indent=2) + "\n"
