"""What every distributed scoring entry point does first on the driver: verify, match columns, pack for workers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..bundle.store import open_bundle
from ..runtime.drift import check_policy
from .columns import ColumnPlan, plan_columns
from .gate import Shipment, ship


def prepare(
    bundle: str | os.PathLike[str],
    schema: Any,
    *,
    keep: Sequence[str],
    id_column: str | None,
    env_policy: str,
    public_key: str | os.PathLike[str] | None,
    source: str,
) -> tuple[Shipment, ColumnPlan]:
    """The bundle verified here and packed for the workers, and ``schema`` (Arrow) matched to its inputs.

    Raises:
        UsageError: an unknown drift policy, or a column missing or of the wrong type (named).
        BundleInvalid: the bundle fails verification.
    """
    check_policy(env_policy)
    verified = open_bundle(bundle, public_key)
    plan = plan_columns(verified.manifest, schema, keep=tuple(keep), id_column=id_column, source=source)
    return ship(verified), plan
