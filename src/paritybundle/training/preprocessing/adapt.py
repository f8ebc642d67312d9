"""Turn whatever a user passes as ``preprocess=`` into a :class:`Preprocessor`."""

from __future__ import annotations

from typing import Any

from ...errors import SpecError
from .. import _torch
from .pipeline import Preprocessor

DEFAULT_OUTPUT = "features"


def as_preprocessor(value: Any, input_names: list[str], spec: Any) -> Preprocessor:
    """:func:`wrap` ``value``; where it reads only some of ``input_names`` (a Pipeline on the image, Columns on
    some columns, a tokenizer on the text), the others pass through to the model (:mod:`.partial`)."""
    from .partial import PartialPreprocess, inputs_read

    preprocessor = wrap(value, input_names, spec)
    read = inputs_read(preprocessor, input_names)
    passthrough = [name for name in input_names if name not in read]
    return PartialPreprocess(preprocessor, passthrough) if passthrough else preprocessor


def wrap(value: Any, input_names: list[str], spec: Any) -> Preprocessor:
    """A paritybundle Pipeline/Columns as is; a ``torch.nn.Module``, a fitted scikit-learn
    transformer or a Hugging Face tokenizer wrapped. Refuses anything unfitted: statistics are
    fitted once, in research.

    Raises:
        SpecError: not a supported kind of preprocessing, or not fitted.
    """
    if isinstance(value, Preprocessor):
        if not getattr(value, "fitted", True):
            raise SpecError(
                f"the preprocessing {type(value).__name__} is not fitted; call .fit(training_data) "
                "before exporting (fit on training data, not on the reference inputs)."
            )
        return value
    from .tokenizer import TokenizerPreprocess, is_tokenizer

    if is_tokenizer(value):
        return TokenizerPreprocess(value, input_names, spec.model)
    if _torch.is_module(value):
        from ..calling import signature_of
        from .torch_adapter import TorchPreprocess

        # The inputs forward names (the others pass through to the model); all of them if it names none.
        signature = signature_of(value)
        named = [n for n in (signature.positional if signature else ()) if n in input_names]
        return TorchPreprocess(value, named or input_names, DEFAULT_OUTPUT, spec=spec)
    if hasattr(value, "transform") and hasattr(value, "get_params"):
        try:
            from sklearn.exceptions import NotFittedError
            from sklearn.utils.validation import check_is_fitted
        except ImportError:
            raise SpecError("this preprocessing looks like scikit-learn, which is not installed here.") from None
        try:
            check_is_fitted(value)
        except NotFittedError:
            raise SpecError(
                f"the scikit-learn {type(value).__name__} is not fitted; fit it on training data before exporting."
            ) from None
        from .sklearn_adapter import SklearnPreprocess

        return SklearnPreprocess(value, DEFAULT_OUTPUT)
    raise SpecError(
        f"preprocess={type(value).__name__} is not supported; pass a paritybundle.preprocess Pipeline or "
        "Columns, a fitted scikit-learn transformer, a torch.nn.Module, or a Hugging Face tokenizer."
    )
