"""How reference inputs reach a model's ``forward``, read from its signature (no torch import).

* one array: the single positional argument (named ``input`` unless ``input_names`` says);
* a tuple: ``forward``'s parameters in order, named after them;
* a mapping: by keyword, each key naming a parameter of ``forward`` (a key that names none is
  refused, listing the parameters), unless ``forward`` takes ``**kwargs``.

The bundle's input names are these names: what a caller sends is what ``forward`` was called with.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError


@dataclass(frozen=True)
class Convention:
    """The input names in graph order, and whether ``forward`` receives them by keyword."""

    names: tuple[str, ...]
    by_keyword: bool = False


@dataclass(frozen=True)
class Signature:
    """The parameters of ``forward`` that reference inputs may fill."""

    positional: tuple[str, ...]  # positional-or-keyword (and positional-only) parameters, in order
    keywords: tuple[str, ...]  # every parameter a keyword can name
    var_positional: bool
    var_keyword: bool

    def listing(self) -> str:
        names = (
            list(self.keywords)
            + (["*args"] if self.var_positional else [])
            + (["**kwargs"] if self.var_keyword else [])
        )
        return ", ".join(names) or "no parameters"


def signature_of(model: Any) -> Signature | None:
    """``model.forward``'s parameters, or None where Python cannot read them (a compiled module)."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return None
    kinds = inspect.Parameter
    return Signature(
        positional=tuple(p.name for p in parameters if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)),
        keywords=tuple(p.name for p in parameters if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)),
        var_positional=any(p.kind is kinds.VAR_POSITIONAL for p in parameters),
        var_keyword=any(p.kind is kinds.VAR_KEYWORD for p in parameters),
    )


def convention_for(model: Any, raw: Any, input_names: Any) -> Convention:
    """How ``raw`` (one group of reference inputs, as the caller passed it) reaches ``model.forward``.

    Raises:
        SpecError: mapping keys that name no parameter, more tuple items than parameters, or
            ``input_names`` that disagree with either.
    """
    signature = signature_of(model)
    if isinstance(raw, Mapping) or (hasattr(raw, "columns") and hasattr(raw, "to_dict")):
        keys = [str(k) for k in (raw.columns if hasattr(raw, "columns") else raw)]
        if signature is None or signature.var_keyword:
            return Convention(tuple(keys), by_keyword=signature is not None)
        unknown = [k for k in keys if k not in signature.keywords]
        if unknown:
            raise SpecError(
                f"reference input {'keys' if len(unknown) > 1 else 'key'} {', '.join(map(repr, unknown))} "
                f"{'name' if len(unknown) > 1 else 'names'} no parameter of {type(model).__name__}.forward "
                f"({signature.listing()}); each key is passed by keyword, so name the parameter it feeds "
                "(or pass a tuple, in forward's order)."
            )
        return Convention(tuple(keys), by_keyword=True)
    if isinstance(raw, tuple):
        count = len(raw)
        if input_names is not None:
            names = [str(n) for n in input_names]
            if len(names) != count:
                raise SpecError(f"{len(names)} input_names given for a tuple of {count} reference inputs.")
            return Convention(tuple(names))
        if signature is None:
            return Convention(tuple(f"input_{k}" for k in range(count)))
        if count > len(signature.positional) and not signature.var_positional:
            raise SpecError(
                f"the reference inputs are a tuple of {count}, but {type(model).__name__}.forward takes "
                f"{len(signature.positional)} positional parameters ({signature.listing()})."
            )
        names = list(signature.positional[:count])
        names += [f"input_{k}" for k in range(len(names), count)]
        return Convention(tuple(names))
    names = [str(n) for n in (input_names or ["input"])]
    if len(names) != 1:
        raise SpecError(
            f"{len(names)} input names given but one reference array; pass a mapping name -> array or a tuple."
        )
    return Convention(tuple(names))


def features_convention(model: Any, preprocessor: Any, features: Any) -> Convention | None:
    """How a model behind preprocessing reads its features: positionally (None), unless the preprocessor's
    features are keyword arguments (a tokenizer's ``input_ids=...``, ``attention_mask=...``), or, for inputs
    passed through beside preprocessed ones (``"where named"``), ``forward`` names every one of them."""
    mode = getattr(preprocessor, "features_by_keyword", False)
    if not mode:
        return None
    signature = signature_of(model)
    if mode == "where named" and (
        signature is None or (not signature.var_keyword and any(name not in signature.keywords for name in features))
    ):
        return None
    return convention_for(model, features, None)
