"""The base of every document paritybundle reads or writes (manifest, lock, reports).

Strict and frozen: an unknown key is refused rather than ignored (a typo in a hand-edited
manifest must not silently drop a setting), and a parsed document cannot be changed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def printable(text: object) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``), for logs and terminals: a
    bundle's strings are data, and an escape sequence in a manifest must not reach a terminal."""
    return "".join(ch if ch.isprintable() or ch in " \n\t" else ch.encode("unicode_escape").decode("ascii")
                   for ch in str(text))
