"""The base of every document paritybundle reads or writes (manifest, lock, reports).

Strict and frozen: an unknown key is refused rather than ignored (a typo in a hand-edited
manifest must not silently drop a setting), and a parsed document cannot be changed. A
bundle's documents (:class:`BundleDocument`) also refuse NaN and infinity in any number,
and their JSON is read strictly (:func:`load_json_document`).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, ValidationError, model_serializer

from ..errors import BundleInvalid


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BundleDocument(StrictModel):
    """A part of ``bundle.json``: strict like every document, and no NaN or infinity in any number."""

    model_config = ConfigDict(allow_inf_nan=False)
    # Optional fields written only when they hold something (None, [] and {} are left out), so a bundle that
    # needs none of them stays what older readers, which refuse unknown keys, read. Each document names its own.
    written_when_set: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_unset_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self.written_when_set and isinstance(data, dict):
            for key in self.written_when_set:
                if data.get(key) in (None, [], {}):
                    data.pop(key, None)
        return data


def printable(text: object) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``), for logs and terminals: a
    bundle's strings are data, and an escape sequence in a manifest must not reach a terminal."""
    # (Codec names are case-insensitive, and "X" is printable anyway: this line's mutants are equivalent.)
    return "".join(
        ch if ch.isprintable() or ch in " \n\t" else ch.encode("unicode_escape").decode("ascii")  # pragma: no mutate
        for ch in str(text)
    )


def load_json_document(raw: bytes, source: str, kind: str) -> Any:
    """JSON as a bundle document must be: UTF-8, no duplicate keys (json.loads keeps the last, so a second
    "files" would silently win), no integer beyond Python's digit limit, no nesting beyond its recursion.

    Raises:
        BundleInvalid: saying which of these it is.
    """
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleInvalid(f"{source} is not a valid {kind}: not valid JSON ({exc}); re-export the bundle.") from None
    except ValueError as exc:  # a duplicate key, or an integer past the 4300-digit conversion limit
        raise BundleInvalid(f"{source} is not a valid {kind} ({str(exc)[:200]}); re-export the bundle.") from None
    except RecursionError:
        raise BundleInvalid(f"{source} is not a valid {kind}: nested too deeply; re-export the bundle.") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"the key {key[:80]!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def validation_summary(exc: ValidationError) -> str:
    """The first few problems of a pydantic error, ``where: what`` each, for one sentence."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])[:120] or '(top level)'}: {err['msg'][:200]}" for err in exc.errors()[:5]
    )
    more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return problems + more
