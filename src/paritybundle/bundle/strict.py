"""The base of every document paritybundle reads or writes (manifest, lock, reports).

Strict and frozen: an unknown key is refused rather than ignored (a typo in a hand-edited
manifest must not silently drop a setting), and a parsed document cannot be changed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
